"""Measures what grows with the number of image partitions, on a real Postgres (docs/SCALE.md).

`python -m orfeas_pipelines.deploy.scale [--partitions 100000] [--per-tick 500]` starts a
throw-away Postgres, registers partitions as the sensor does (one `add_dynamic_partitions` per
tick), and at checkpoints times what every run and tick pays for the whole partition set:
listing the keys (what `run_partition_keys` does to settle a range run) and one membership check.

`--browser-python P` also times the Dagster UI's partitions page of `mesh` at each
checkpoint in headless Chromium (`apt-get install chromium`), driven by Playwright from the
Python `P` (a separate virtualenv with `pip install playwright`: it is no project dependency).
`--materialise` records a materialisation of `mesh` per partition, as a delivered image has;
`--retire-to N` then retires (deletes) the oldest partitions as the retire schedule does,
until N are left, and times that and the page again.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

CHECKPOINTS = (1_000, 10_000, 40_000, 100_000)


PAGE_LOAD_SCRIPT = """
import sys, time
from playwright.sync_api import sync_playwright
url, expected, shot = sys.argv[1], sys.argv[2], sys.argv[3]
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    started = time.perf_counter()
    page.goto(url)
    page.get_by_text(expected).first.wait_for(timeout=600_000)
    print(round(time.perf_counter() - started, 2))
    if page.get_by_role("button", name="Skip").count():  # the first visit's newsletter dialog
        page.get_by_role("button", name="Skip").first.click()
    page.screenshot(path=shot)
    browser.close()
"""


def page_load_seconds(browser_python: str, url: str, expected: str, screenshot: Path) -> float:
    """Seconds from navigation until `expected` shows on the page, in headless Chromium."""
    import subprocess

    done = subprocess.run(
        [browser_python, "-c", PAGE_LOAD_SCRIPT, url, expected, str(screenshot)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"page load of {url} failed: {done.stderr.strip()[-500:]}")
    return float(done.stdout.split()[-1])


def measure(
    instance, partitions: int, per_tick: int, page_load=None, materialise: bool = False, retire_to: int | None = None
) -> list[dict]:
    """One row per checkpoint: registration time per tick so far, the per-run listing cost, and
    the UI's partitions page load when `page_load(count)` is given. `materialise` records a
    run-less materialisation of `mesh` for every partition, as delivered images have;
    `retire_to` then deletes the oldest partitions down to that many and measures once more."""
    rows, registered, tick_seconds = [], 0, []
    while registered < partitions:
        keys = [f"job{registered + index:07d}/image.png" for index in range(per_tick)]
        started = time.perf_counter()
        instance.add_dynamic_partitions("images", keys)
        tick_seconds.append(time.perf_counter() - started)
        if materialise:
            _materialise(instance, keys)
        registered += per_tick
        if registered in CHECKPOINTS or registered >= partitions:
            row = {"partitions": registered, "add 1 tick (ms, mean of last 10)": round(1000 * sum(tick_seconds[-10:]) / len(tick_seconds[-10:]), 1)}
            rows.append({**row, **_costs(instance, keys[-1], page_load)})
    if retire_to is not None:
        from orfeas_pipelines.schedules.retire import delete_image_partitions

        retiring = instance.get_dynamic_partitions("images")[: max(0, registered - retire_to)]
        started = time.perf_counter()
        delete_image_partitions(instance, retiring)
        row = {"partitions": registered - len(retiring), f"retire {len(retiring)} (s)": round(time.perf_counter() - started, 2)}
        rows.append({**row, **_costs(instance, keys[-1], page_load)})
    return rows


def _costs(instance, key: str, page_load) -> dict:
    """What the live partition set costs now: listing it, one membership check, the UI page."""
    started = time.perf_counter()
    listed = instance.get_dynamic_partitions("images")
    list_seconds = time.perf_counter() - started
    started = time.perf_counter()
    instance.has_dynamic_partition("images", key)
    return {
        "list all keys (ms)": round(1000 * list_seconds, 1),
        "has one key (ms)": round(1000 * (time.perf_counter() - started), 2),
        **({"UI partitions page (s)": page_load(len(listed))} if page_load else {}),
    }


def _materialise(instance, keys: list[str]) -> None:
    """Run-less materialisations of `mesh`, one per key, written as one batch (as a run's
    delivered images are; one event at a time would take 30 minutes for 100,000)."""
    from dagster import AssetMaterialization, DagsterEvent, DagsterEventType
    from dagster._core.events import StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    now = time.time()
    entries = [
        EventLogEntry(
            user_message="", level=20, job_name=RUNLESS_JOB_NAME, run_id=RUNLESS_RUN_ID, error_info=None, timestamp=now,
            dagster_event=DagsterEvent(
                event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
                event_specific_data=StepMaterializationData(AssetMaterialization(asset_key="mesh", partition=key)),
                job_name=RUNLESS_JOB_NAME,
            ),
        )
        for key in keys
    ]
    instance.event_log_storage.store_event_batch(entries)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from dagster import DagsterInstance

    from orfeas_pipelines.deploy.cluster import serves, service_commands, start_services, stop_services
    from orfeas_pipelines.deploy.servers import free_port, start_postgres

    parser = argparse.ArgumentParser(prog="orfeas-scale", description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=100_000)
    parser.add_argument("--per-tick", type=int, default=500)
    parser.add_argument("--browser-python", help="a Python with playwright, to time the UI's partitions page")
    parser.add_argument("--screenshots", type=Path, help="where to keep the UI screenshots (default: discarded)")
    parser.add_argument("--materialise", action="store_true", help="materialise every partition (one event batch per tick)")
    parser.add_argument("--retire-to", type=int, help="then retire the oldest partitions until this many are left")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="orfeas-scale-"))
    root.chmod(0o755)
    server = start_postgres(root / "postgres")
    pids = {}
    try:
        url = server.url.replace("postgresql://", "postgresql+psycopg2://", 1)
        (root / "dagster").mkdir()
        (root / "dagster" / "dagster.yaml").write_text(f"storage:\n  postgres:\n    postgres_url: {url}\n")
        page_load = None
        if args.browser_python:
            port = free_port()
            webserver = {"webserver": service_commands(0, port)["webserver"]}
            pids = start_services(webserver, {"DAGSTER_HOME": str(root / "dagster")}, root / "logs")
            page = f"http://127.0.0.1:{port}/assets/mesh?view=partitions"
            shots = args.screenshots or root
            shots.mkdir(parents=True, exist_ok=True)
            deadline = time.monotonic() + 120
            while not serves(f"http://127.0.0.1:{port}/server_info") and time.monotonic() < deadline:
                time.sleep(0.5)

            def page_load(count: int) -> float:
                expected = f"Materialized ({count})" if args.materialise else f"{count:,} Partitions Selected"
                return page_load_seconds(args.browser_python, page, expected, shots / f"ui-{count}.png")

        with DagsterInstance.from_config(str(root / "dagster")) as instance:
            print(pd.DataFrame(measure(instance, args.partitions, args.per_tick, page_load, args.materialise, args.retire_to)).to_string(index=False))
    finally:
        stop_services(pids)
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

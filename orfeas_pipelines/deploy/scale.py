"""Measures what grows with the number of image partitions, on a real Postgres (docs/SCALE.md).

`python -m orfeas_pipelines.deploy.scale [--partitions 100000] [--per-tick 500]` starts a
throw-away Postgres, registers partitions as the sensor does (one `add_dynamic_partitions` per
tick), and at checkpoints times what every run and tick pays for the whole partition set:
listing the keys (what `run_partition_keys` does to settle a range run) and one membership check.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

CHECKPOINTS = (1_000, 10_000, 40_000, 100_000)


def measure(instance, partitions: int, per_tick: int) -> list[dict]:
    """One row per checkpoint: registration time per tick so far, and the per-run listing cost."""
    rows, registered, tick_seconds = [], 0, []
    while registered < partitions:
        keys = [f"job{registered + index:07d}/image.png" for index in range(per_tick)]
        started = time.perf_counter()
        instance.add_dynamic_partitions("images", keys)
        tick_seconds.append(time.perf_counter() - started)
        registered += per_tick
        if registered in CHECKPOINTS or registered >= partitions:
            started = time.perf_counter()
            listed = instance.get_dynamic_partitions("images")
            list_seconds = time.perf_counter() - started
            started = time.perf_counter()
            instance.has_dynamic_partition("images", keys[-1])
            rows.append(
                {
                    "partitions": len(listed),
                    "add 1 tick (ms, mean of last 10)": round(1000 * sum(tick_seconds[-10:]) / len(tick_seconds[-10:]), 1),
                    "list all keys (ms)": round(1000 * list_seconds, 1),
                    "has one key (ms)": round(1000 * (time.perf_counter() - started), 2),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    from dagster import DagsterInstance

    from orfeas_pipelines.deploy.servers import start_postgres

    parser = argparse.ArgumentParser(prog="orfeas-scale", description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=100_000)
    parser.add_argument("--per-tick", type=int, default=500)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="orfeas-scale-"))
    root.chmod(0o755)
    server = start_postgres(root / "postgres")
    try:
        url = server.url.replace("postgresql://", "postgresql+psycopg2://", 1)
        (root / "dagster").mkdir()
        (root / "dagster" / "dagster.yaml").write_text(f"storage:\n  postgres:\n    postgres_url: {url}\n")
        with DagsterInstance.from_config(str(root / "dagster")) as instance:
            print(pd.DataFrame(measure(instance, args.partitions, args.per_tick)).to_string(index=False))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

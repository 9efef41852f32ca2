"""`orfeas bench api --end-to-end`: POST /v1/jobs to the `succeeded` event with the daemon running.

Starts what `make dev` starts, on a temporary home: the Dagster daemon (`dagster-daemon
run`, the sensors and the run queue; the webserver only serves the UI and is left out) and
`orfeas serve`. Then, one job at a time, submits one sample image at the given resolution
after a random pause shorter than the sensor interval (so the submissions fall anywhere
in the sensor's cycle, as an agent's would) and follows the job's SSE stream until it is
terminal. Where the time goes comes from the Dagster run record and its events:

- sensor: POST until the run exists (the tick that registered the image requested it);
- queue: run created until launched (the run queue's dequeue loop);
- process start: launched until the run's process started executing;
- generation: run started until the job's status says succeeded (load, generate, export);
- settle: status written until the `succeeded` event arrived at the client.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

from orfeas_pipelines.lib.home import OrfeasHome

SEGMENTS = ("sensor", "queue", "process start", "generation", "settle")
READY_TIMEOUT_SECONDS = 180.0
JOB_TIMEOUT_SECONDS = 300.0


def bench_end_to_end(
    jobs: int = 10,
    resolution: int = 128,
    port: int | None = None,
    hold_seconds: float = 0.0,
    seed: int = 0,
    tmp_dir: str | Path | None = None,
) -> list[dict]:
    """One row per job (seconds: total and each segment) plus a warm-up row for the first, uncounted job.

    `hold_seconds` keeps the daemon and the API up after the last job, e.g. for a Prometheus
    scraping the API's port to see the final counts.
    """
    from dagster import DagsterInstance

    from orfeas_pipelines.deploy.cluster import service_commands, start_services, stop_services
    from orfeas_pipelines.deploy.servers import free_port
    from orfeas_pipelines.lib.intake.registry import create_agent
    from orfeas_pipelines.runner import install_instance_config

    with tempfile.TemporaryDirectory(prefix="orfeas-bench-e2e-", dir=tmp_dir) as root:
        home = OrfeasHome.at(Path(root) / "home").ensure()
        install_instance_config(home)
        DagsterInstance.from_config(str(home.dagster_home)).dispose()  # the schema, before the daemon races us to it
        agent = create_agent(home.agents_file, "bench-e2e", rate_per_minute=600)
        port = port or free_port()
        env = {
            "ORFEAS_HOME": str(home.root),
            "DAGSTER_HOME": str(home.dagster_home),
            "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "1",
        }
        pids = start_services(service_commands(0, None, port), env, Path(root) / "logs")
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_until_ready(home, pids, base, Path(root) / "logs")
            rows = _measure_jobs(home, base, agent, jobs + 1, resolution, random.Random(seed))
            time.sleep(hold_seconds)
        finally:
            stop_services(pids)
    rows[0]["job"] = "warm-up (not counted)"
    return rows


def summary_rows(rows: list[dict]) -> list[dict]:
    """p50 and p95 of the total and of each segment over the counted jobs."""
    counted = [row for row in rows if not str(row["job"]).startswith("warm-up")]
    summaries = []
    for label, percent in (("p50", 50), ("p95", 95)):
        summary = {"job": f"{label} of {len(counted)}"}
        for column in ("total", *SEGMENTS):
            values = sorted(row[column] for row in counted)
            summary[column] = round(_percentile(values, percent), 2)
        summaries.append(summary)
    return summaries


def sensor_interval_seconds() -> int:
    from orfeas_pipelines.sensors.intake import inbox_sensor

    return inbox_sensor.minimum_interval_seconds


def _measure_jobs(home: OrfeasHome, base: str, agent, count: int, resolution: int, chance: random.Random) -> list[dict]:
    from orfeas_pipelines.client import OrfeasClient
    from orfeas_pipelines.lib.samples import sample_image_paths

    samples = sample_image_paths()
    interval = sensor_interval_seconds()
    rows = []
    with OrfeasClient(base, agent.agent_id, agent.secret) as client:
        for index in range(count):
            time.sleep(chance.uniform(0, interval))
            posted = time.time()
            job_id = client.submit([samples[index % len(samples)]], resolution=resolution)["job_id"]
            final = _follow(client, job_id)
            arrived = time.time()
            if final["state"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {final['state']}: {final}")
            rows.append(_segments(home, index, job_id, posted, final, arrived))
    return rows


def _follow(client, job_id: str) -> dict:
    """The job's terminal event (JOB_TIMEOUT_SECONDS at most)."""
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    for event in client.events(job_id):
        if event["state"] in ("succeeded", "failed", "rejected"):
            return event
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"job {job_id} did not finish within {JOB_TIMEOUT_SECONDS:.0f} s")


def _segments(home: OrfeasHome, index: int, job_id: str, posted: float, final: dict, arrived: float) -> dict:
    from dagster import DagsterEventType, DagsterInstance

    from orfeas_pipelines.bench.api import _epoch

    with DagsterInstance.from_config(str(home.dagster_home)) as instance:
        run_id = final["run_ids"][0]
        record = instance.get_run_record_by_id(run_id)
        launched = [
            entry.timestamp
            for entry in instance.all_logs(run_id, of_type=DagsterEventType.RUN_STARTING)
        ]
    created = record.create_timestamp.timestamp()
    starting = launched[0] if launched else created
    settled = _epoch(final["updated_at"])
    moments = (posted, created, starting, record.start_time, settled, arrived)
    row = {"job": index, "run": run_id[:8], "total": round(arrived - posted, 2)}
    for name, start, end in zip(SEGMENTS, moments, moments[1:]):
        row[name] = round(end - start, 2)
    return row


def _wait_until_ready(home: OrfeasHome, pids: dict[str, int], base: str, logs: Path) -> None:
    """Until the daemon reports healthy and the API answers /v1/health."""
    import httpx
    from dagster import DagsterInstance
    from dagster._daemon.controller import all_daemons_healthy

    from orfeas_pipelines.deploy.servers import alive

    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    with DagsterInstance.from_config(str(home.dagster_home)) as instance:
        while time.monotonic() < deadline:
            dead = [name for name, pid in pids.items() if not alive(pid)]
            if dead:
                tail = (logs / f"{dead[0]}.log").read_text(errors="replace")[-1000:]
                raise RuntimeError(f"{dead[0]} exited while starting: {tail}")
            try:
                api_up = httpx.get(f"{base}/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                api_up = False
            if api_up and all_daemons_healthy(instance):
                return
            time.sleep(0.5)
    raise RuntimeError(f"the daemon and orfeas serve were not ready within {READY_TIMEOUT_SECONDS:.0f} s")


def _percentile(ordered: list[float], percent: float) -> float:
    """Interpolated percentile of a few values (statistics.quantiles needs two at least)."""
    if len(ordered) < 2:
        return ordered[0] if ordered else float("nan")
    return statistics.quantiles(ordered, n=100, method="inclusive")[percent - 1]

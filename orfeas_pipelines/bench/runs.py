"""`orfeas bench runs`: single-image jobs as one batched range run vs one run per job.

Both modes start real run processes (`dagster asset materialize`), as the daemon's run
launcher does, so the per-run start cost that batching saves is part of the figure. The
two modes use the same images, parameters and machine, in the same invocation.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orfeas_pipelines.lib.home import OrfeasHome




def bench_runs(jobs: int = 32, resolution: int = 64) -> dict:
    """Jobs per minute both ways and their ratio (batched / one run per job)."""
    with tempfile.TemporaryDirectory(prefix="orfeas-bench-runs-") as tmp:
        per_job_seconds = _time_mode(OrfeasHome.at(Path(tmp) / "per_job").ensure(), jobs, resolution, batched=False)
        batched_seconds = _time_mode(OrfeasHome.at(Path(tmp) / "batched").ensure(), jobs, resolution, batched=True)
    return {
        "jobs": jobs,
        "resolution": resolution,
        "batched_runs": 1,
        "batched_seconds": round(batched_seconds, 2),
        "per_job_runs": jobs,
        "per_job_seconds": round(per_job_seconds, 2),
        "batched_jobs_per_minute": round(60 * jobs / batched_seconds, 1),
        "per_job_jobs_per_minute": round(60 * jobs / per_job_seconds, 1),
        "ratio": round(per_job_seconds / batched_seconds, 2),
    }


def _time_mode(home: OrfeasHome, jobs: int, resolution: int, batched: bool) -> float:
    """Register `jobs` single-image jobs through the intake, then time only their runs."""
    from orfeas_pipelines.lib import outbox
    from orfeas_pipelines.lib.intake.registry import create_agent
    from orfeas_pipelines.lib.intake.submit import write_job
    from orfeas_pipelines.lib.samples import sample_image_paths
    from orfeas_pipelines.resources.home import OrfeasHomeResource
    from orfeas_pipelines.runner import apply_sensor_result, open_instance, tick_sensor
    from orfeas_pipelines.sensors.intake import IntakeSettings, inbox_sensor

    agent = create_agent(home.agents_file, "bench", rate_per_minute=100_000, max_images=1)
    samples = sample_image_paths()
    job_ids = [
        write_job(home, [samples[index % len(samples)]], agent.agent_id, agent.secret, resolution=resolution)
        for index in range(jobs)
    ]
    orfeas_home = OrfeasHomeResource(root=str(home.root))
    with open_instance(home) as instance:
        resources = {"orfeas_home": orfeas_home, "intake_settings": IntakeSettings()}
        result = tick_sensor(instance, inbox_sensor.name, resources)
        apply_sensor_result(instance, inbox_sensor.name, result)
        keys = list(result.dynamic_partitions_requests[0].partition_keys)
    environment = {**os.environ, "DAGSTER_HOME": str(home.dagster_home)}
    selections = [["--partition-range", f"{keys[0]}...{keys[-1]}"]] if batched else [["--partition", key] for key in keys]
    started = time.perf_counter()
    for selection in selections:
        subprocess.run(
            [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "orfeas_pipelines.definitions",
             "--select", "mesh", "--config-json", json.dumps(orfeas_home.run_config()), *selection],
            env=environment,
            check=True,
            capture_output=True,
        )
    seconds = time.perf_counter() - started
    unfinished = [job_id for job_id in job_ids if (outbox.read_status(home, job_id) or {}).get("state") != "succeeded"]
    if unfinished:
        raise RuntimeError(f"bench runs: {len(unfinished)} jobs did not succeed, e.g. {unfinished[0]}")
    return seconds

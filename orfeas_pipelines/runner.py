"""What the daemon does, done once in this process: one intake tick, then its runs.

`orfeas process` and `orfeas demo` use this against the home's own Dagster instance
(`$ORFEAS_HOME/dagster`), evaluating the real sensor and executing the run it requests with
the same range tags, so they take the same code path as `make dev`'s daemon.
"""

import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files

import dagster as dg

from orfeas_pipelines.lib.home import OrfeasHome

PARTITIONS_PER_REQUEST = 10_000
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class ProcessReport:
    """What one `process` call did: jobs it picked up and the runs it executed."""

    job_ids: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    failed_runs: list[str] = field(default_factory=list)
    skip_reason: str | None = None


def open_instance(home: OrfeasHome) -> dg.DagsterInstance:
    """The home's persistent instance, with the project's dagster.yaml (pool limits) in place."""
    dagster_home = home.dagster_home
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(str(files("orfeas_pipelines") / "dagster.yaml"), config)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dg.DagsterInstance.from_config(str(dagster_home))


def process_once(home: OrfeasHome, now: datetime | None = None) -> ProcessReport:
    """Evaluate the inbox sensor once and execute every run it requested, in order."""
    from orfeas_pipelines.definitions import defs
    from orfeas_pipelines.partitions import images_partitions, job_id_of
    from orfeas_pipelines.resources.home import OrfeasHomeResource
    from orfeas_pipelines.sensors.intake import IntakeSettings, evaluate_intake, inbox_sensor, record_registered_seq
    from orfeas_pipelines.sensors.outbox import run_partition_keys, settle_run

    os.environ["ORFEAS_HOME"] = str(home.root)
    orfeas_home = OrfeasHomeResource(root=str(home.root))
    report = ProcessReport()
    with open_instance(home) as instance:
        result = evaluate_intake(orfeas_home, IntakeSettings(), None, instance, now=now)
        report.skip_reason = result.skip_reason
        for request in result.dynamic_partitions_requests:
            keys = list(request.partition_keys)
            for start in range(0, len(keys), PARTITIONS_PER_REQUEST):
                instance.add_dynamic_partitions(images_partitions.name, keys[start : start + PARTITIONS_PER_REQUEST])
        job = defs.resolve_job_def("mesh_job")
        for request in result.run_requests:
            outcome = job.execute_in_process(
                instance=instance,
                tags={**request.tags, "dagster/run_key": request.run_key or "", "dagster/sensor_name": inbox_sensor.name},
                run_config=QUIET_RUN_CONFIG,
                raise_on_error=False,
            )
            run = instance.get_run_by_id(outcome.run_id)
            report.run_ids.append(outcome.run_id)
            report.job_ids.extend(sorted({job_id_of(key) for key in run_partition_keys(instance, run)}))
            if not outcome.success:
                report.failed_runs.append(outcome.run_id)
            reason = "run ended without delivering this image" if outcome.success else f"run {outcome.run_id} failed"
            settle_run(orfeas_home, instance, run, reason)
        if result.run_requests:
            record_registered_seq(instance, int(result.cursor))
    return report

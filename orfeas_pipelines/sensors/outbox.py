"""Run-status sensors: a run that ends without delivering an image marks it failed."""


import dagster as dg

from orfeas_pipelines.jobs import mesh_job
from orfeas_pipelines.partitions import images_partitions, job_id_of
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.sensors.intake import RANGE_END_TAG, RANGE_START_TAG


def run_partition_keys(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[str]:
    """The image partitions a run covered: its range tags, or its single partition."""
    tags = run.tags
    if RANGE_START_TAG in tags:
        keys = list(instance.get_dynamic_partitions(images_partitions.name))
        start, end = keys.index(tags[RANGE_START_TAG]), keys.index(tags[RANGE_END_TAG])
        return keys[start : end + 1]
    return [tags["dagster/partition"]] if "dagster/partition" in tags else []


def settle_run(orfeas_home: OrfeasHomeResource, instance: dg.DagsterInstance, run: dg.DagsterRun, reason: str) -> int:
    """Mark every image of the run's jobs that is not yet terminal as failed; returns jobs touched."""
    from orfeas_pipelines.lib import outbox

    home = orfeas_home.home
    job_ids = sorted({job_id_of(key) for key in run_partition_keys(instance, run)})
    for job_id in job_ids:
        outbox.mark_run_failed(home, job_id, run.run_id, reason)
    return len(job_ids)


@dg.run_failure_sensor(monitored_jobs=[mesh_job], default_status=dg.DefaultSensorStatus.RUNNING)
def mesh_run_failed(context: dg.RunFailureSensorContext, orfeas_home: OrfeasHomeResource) -> None:
    """A failed or blocked run fails the images it did not deliver, naming the run's error."""
    message = context.failure_event.message or "run failed"
    settle_run(orfeas_home, context.instance, context.dagster_run, f"run {context.dagster_run.run_id} failed: {message}")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[mesh_job], default_status=dg.DefaultSensorStatus.RUNNING
)
def mesh_run_succeeded(context: dg.RunStatusSensorContext, orfeas_home: OrfeasHomeResource) -> None:
    """A successful run that skipped an image (e.g. a blocked check) still settles it."""
    settle_run(orfeas_home, context.instance, context.dagster_run, "run ended without delivering this image")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED, monitored_jobs=[mesh_job], default_status=dg.DefaultSensorStatus.RUNNING
)
def mesh_run_canceled(context: dg.RunStatusSensorContext, orfeas_home: OrfeasHomeResource) -> None:
    """A canceled run fails the images it did not deliver; the nightly drain retries them."""
    settle_run(orfeas_home, context.instance, context.dagster_run, f"run {context.dagster_run.run_id} was canceled")

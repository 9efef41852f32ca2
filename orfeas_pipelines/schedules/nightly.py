"""The drain: range runs over every image that is neither delivered nor failed for good.

Dagster's status decides: an image is delivered when its `mesh` partition is materialized,
and failed for good when its latest `mesh_is_valid` check failed. Everything else that no
run is working on now (a run that crashed, was canceled, ran out of retries, or was never
launched) is drained. The nightly schedule runs it for the daemon; `orfeas process` runs it
after each intake tick, so a user without the daemon recovers too.
"""

import time

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from orfeas_pipelines.assets.meshes import MESH, VALID_CHECK
from orfeas_pipelines.jobs import mesh_job
from orfeas_pipelines.partitions import images_partitions, range_tags
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.sensors.intake import MAX_IMAGES_PER_RUN
from orfeas_pipelines.sensors.status import run_partition_keys, touches_images

ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def drain_keys(instance: dg.DagsterInstance, keys: list[str] | None = None) -> list[str]:
    """Image partitions, in partition order, that the drain should run (of `keys`, the image
    partitions already read, or all of them)."""
    keys = instance.get_dynamic_partitions(images_partitions.name) if keys is None else keys
    busy = set()  # read before what is delivered: a run that ends in between counts as busy, not as undelivered
    for run in instance.get_runs(dg.RunsFilter(statuses=ACTIVE_RUN_STATUSES)):
        if touches_images(instance, run):
            busy.update(run_partition_keys(instance, run, keys))
    delivered = instance.get_materialized_partitions(MESH)
    undelivered = [key for key in keys if key not in delivered]
    if not undelivered:
        return []
    check = dg.AssetCheckKey(MESH, VALID_CHECK)
    failed = {
        info.partition_key
        for info in instance.event_log_storage.get_asset_check_partition_info([check], partition_keys=undelivered)
        if info.latest_execution_status == AssetCheckExecutionRecordStatus.FAILED
    }
    return [key for key in undelivered if key not in failed and key not in busy]


def drain_requests(instance: dg.DagsterInstance, orfeas_home: OrfeasHomeResource, run_key_prefix: str) -> list[dg.RunRequest]:
    """One range run per contiguous stretch of drainable partitions, at most MAX_IMAGES_PER_RUN each.

    Images another process's intake sensor evaluation claimed are left alone: it may be
    registering them now, before their run exists (`lib/intake/claims`)."""
    from orfeas_pipelines.lib.intake.claims import keys_claimed_elsewhere, this_process

    keys = instance.get_dynamic_partitions(images_partitions.name)
    registering = keys_claimed_elsewhere(orfeas_home.home, this_process(), time.time())
    drainable = set(drain_keys(instance, keys)) - registering
    requests = []
    for stretch in _stretches(keys, drainable):
        for start in range(0, len(stretch), MAX_IMAGES_PER_RUN):
            chunk = stretch[start : start + MAX_IMAGES_PER_RUN]
            requests.append(
                dg.RunRequest(
                    run_key=f"{run_key_prefix}-{chunk[0]}",
                    run_config=orfeas_home.run_config(),
                    tags={**range_tags(chunk), "orfeas/purpose": "drain"},
                )
            )
    return requests


def _stretches(keys: list[str], keep: set[str]) -> list[list[str]]:
    """Maximal runs of consecutive keys (in partition order) that are in `keep`."""
    stretches, current = [], []
    for key in keys:
        if key in keep:
            current.append(key)
        elif current:
            stretches.append(current)
            current = []
    if current:
        stretches.append(current)
    return stretches


@dg.schedule(
    cron_schedule="0 2 * * *",
    job=mesh_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every night at 02:00 UTC: range runs over the images that are neither delivered "
    "nor failed for good and that no run is working on (crashed, canceled or out-of-retries "
    "runs). Failures a retry can fix are retried at once by run retries; this catches the rest.",
)
def nightly_drain(context: dg.ScheduleEvaluationContext, orfeas_home: OrfeasHomeResource):
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    return drain_requests(context.instance, orfeas_home, f"drain-{day}") or dg.SkipReason("every image is delivered or failed for good")

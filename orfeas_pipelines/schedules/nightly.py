"""The nightly schedule: drain what is still undelivered and re-verify recent meshes."""


import dagster as dg

from orfeas_pipelines.jobs import mesh_job
from orfeas_pipelines.sensors.intake import MAX_IMAGES_PER_RUN, RANGE_END_TAG, RANGE_START_TAG

REVERIFY_IMAGES = 32


def nightly_run_requests(
    partition_keys: list[str], delivered: set[str], day: str, reverify_images: int = REVERIFY_IMAGES
) -> list[dg.RunRequest]:
    """Range runs over every undelivered stretch, plus one over the latest delivered images.

    Re-running delivered images re-evaluates the blocking batch-vs-sequential check and the
    validity check on them; generation is deterministic, so their files come out the same.
    """
    requests = []
    for stretch in _stretches(partition_keys, lambda key: key not in delivered):
        for start in range(0, len(stretch), MAX_IMAGES_PER_RUN):
            chunk = stretch[start : start + MAX_IMAGES_PER_RUN]
            requests.append(_range_request(f"drain-{day}-{chunk[0]}", chunk, "drain"))
    delivered_stretches = _stretches(partition_keys, lambda key: key in delivered)
    if delivered_stretches and reverify_images > 0:
        latest = delivered_stretches[-1][-reverify_images:]
        requests.append(_range_request(f"reverify-{day}", latest, "reverify"))
    return requests


def _stretches(keys: list[str], keep) -> list[list[str]]:
    """Maximal runs of consecutive keys (in partition order) for which `keep` holds."""
    stretches, current = [], []
    for key in keys:
        if keep(key):
            current.append(key)
        elif current:
            stretches.append(current)
            current = []
    if current:
        stretches.append(current)
    return stretches


def _range_request(run_key: str, keys: list[str], purpose: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key,
        tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1], "orfeas/purpose": purpose},
    )


@dg.schedule(
    cron_schedule="0 2 * * *",
    job=mesh_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def nightly_drain_and_verify(context: dg.ScheduleEvaluationContext):
    """Every night at 02:00 UTC: finish images whose runs failed or never ran, and re-check
    the most recent batch of delivered meshes against sequential generation."""
    instance = context.instance
    keys = instance.get_dynamic_partitions("images")
    delivered = instance.get_materialized_partitions(dg.AssetKey("mesh_files"))
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    requests = nightly_run_requests(keys, delivered, day)
    return requests or dg.SkipReason("no images registered yet")

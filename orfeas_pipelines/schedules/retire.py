"""Retiring delivered partitions: keeps a long-running deployment's image partitions few.

Every image adds a partition and Dagster never drops one; the UI and each range run pay for
the whole set (docs/SCALE.md). Each day, the image partitions of jobs settled more than
`ORFEAS_RETIRE_AFTER_DAYS` (default 7) days ago are archived in the intake ledger and then
deleted from the `images` partitions; so are those of the oldest jobs settled over an hour
ago while more than `ORFEAS_MAX_LIVE_PARTITIONS` (default 20,000) would stay. A retired key
is out of the set the drain and the UI read, so it never runs again; the job's status.json
still answers. `orfeas retire` does the same by hand.
"""

import os
from datetime import datetime, timedelta, timezone

import dagster as dg

from orfeas_pipelines.jobs import mesh_job
from orfeas_pipelines.lib.home import OrfeasHome
from orfeas_pipelines.lib.intake.ledger import RetiredImage, open_ledger
from orfeas_pipelines.lib.retire import settled_images
from orfeas_pipelines.partitions import images_partitions
from orfeas_pipelines.resources.home import OrfeasHomeResource

RETIRE_AFTER_DAYS_ENV = "ORFEAS_RETIRE_AFTER_DAYS"
DEFAULT_RETIRE_AFTER_DAYS = 7.0
MAX_LIVE_PARTITIONS_ENV = "ORFEAS_MAX_LIVE_PARTITIONS"
DEFAULT_MAX_LIVE_PARTITIONS = 20_000
"""Where the UI's partitions page is still about as fast as at 10,000 (docs/SCALE.md)."""
PRESSURE_GRACE = timedelta(hours=1)
"""A job retired to make room has been settled at least this long (its run-status updates are in)."""
MAX_RETIRED_PER_TICK = 50_000
"""Bounds one schedule evaluation (a few seconds); a larger backlog goes over several days."""
DELETE_CHUNK = 1_000


def retire_partitions(
    instance: dg.DagsterInstance, home: OrfeasHome, older_than: timedelta, now: datetime | None = None,
    limit: int | None = None, keep_at_most: int | None = None,
) -> list[RetiredImage]:
    """Archive, then delete, the image partitions of jobs settled before `now - older_than`, and
    of the oldest jobs settled over PRESSURE_GRACE ago while more than `keep_at_most` would stay
    (at most `limit` in all); returns what was retired. Archiving first makes a crash in
    between harmless: the next pass deletes what is archived already."""
    now = now or datetime.now(timezone.utc)
    keys = instance.get_dynamic_partitions(images_partitions.name)
    retiring = settled_images(home, keys, now - older_than, keep_at_most, now - PRESSURE_GRACE)[:limit]
    if retiring:
        with open_ledger(home) as ledger, ledger.transaction():
            ledger.archive_retired(retiring, now.timestamp())
        delete_image_partitions(instance, [image.partition_key for image in retiring])
    return retiring


def delete_image_partitions(instance: dg.DagsterInstance, keys: list[str]) -> None:
    """One DELETE per thousand keys on SQL storage, where `delete_dynamic_partition` costs a
    transaction per key (11 ms each on Postgres, minutes for a day's images)."""
    from dagster._core.storage.event_log.schema import DynamicPartitionsTable as table
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):
        for key in keys:
            instance.delete_dynamic_partition(images_partitions.name, key)
        return
    with storage.index_connection() as connection:
        for start in range(0, len(keys), DELETE_CHUNK):
            chunk = keys[start : start + DELETE_CHUNK]
            connection.execute(
                table.delete().where(table.c.partitions_def_name == images_partitions.name, table.c.partition.in_(chunk))
            )


def positive_setting(name: str, default: float, unit: str) -> float:
    """The environment variable `name` as a positive number, else `default`."""
    text = os.environ.get(name) or str(default)
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{name}={text!r}: expected a positive number of {unit}")
    return value


@dg.schedule(
    cron_schedule="30 3 * * *",
    job=mesh_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every day at 03:30 UTC: the image partitions of jobs settled more than "
    f"${RETIRE_AFTER_DAYS_ENV} (default {DEFAULT_RETIRE_AFTER_DAYS:g}) days ago, and of the oldest "
    f"settled jobs while more than ${MAX_LIVE_PARTITIONS_ENV} (default {DEFAULT_MAX_LIVE_PARTITIONS:,}) "
    "would stay, are archived in the intake ledger and removed, so the partition count stays far "
    "below Dagster's ~100k. Launches no run; the tick's message says how many were retired.",
)
def retire_settled_partitions(context: dg.ScheduleEvaluationContext, orfeas_home: OrfeasHomeResource):
    days = positive_setting(RETIRE_AFTER_DAYS_ENV, DEFAULT_RETIRE_AFTER_DAYS, "days")
    keep = int(positive_setting(MAX_LIVE_PARTITIONS_ENV, DEFAULT_MAX_LIVE_PARTITIONS, "partitions"))
    retired = retire_partitions(
        context.instance, orfeas_home.home, timedelta(days=days), context.scheduled_execution_time,
        MAX_RETIRED_PER_TICK, keep,
    )
    jobs = len({image.job_id for image in retired})
    return dg.SkipReason(f"retired {len(retired)} image partitions of {jobs} jobs settled over {days:g} days ago")

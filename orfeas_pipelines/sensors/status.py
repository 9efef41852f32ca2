"""Job status from Dagster's event log: the one mechanism behind every status.json change after intake.

`settle_run` reads what one run recorded (image deliveries as materializations of `mesh`,
permanent failures as failed `mesh_is_valid` checks, the run's own start and end) and applies
it to the jobs' status files through `lib/outbox`. It is idempotent, so it is called by
whoever learns of progress first: the run itself after each window (live progress), the
`job_status_sensor` for every run that starts or ends (sensor-launched, launched from the UI,
backfills, retries), and `orfeas process` after its own runs. The sensor's cursor moves only
past runs it settled, so a tick that fails half way is repaired by the next one.
"""

import logging
from collections import defaultdict

import dagster as dg
from dagster._core.storage.event_log.base import EventLogCursor

from orfeas_pipelines.assets.meshes import MESH, VALID_CHECK
from orfeas_pipelines.partitions import RANGE_END_TAG, RANGE_START_TAG, file_of, images_partitions, job_id_of
from orfeas_pipelines.resources.home import OrfeasHomeResource

WILL_RETRY_TAG = "dagster/will_retry"
RUN_EVENTS = (
    dg.DagsterEventType.RUN_START,
    dg.DagsterEventType.RUN_SUCCESS,
    dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
)
RUNS_PER_TICK = 200
IN_PROGRESS = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


def touches_images(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Whether a run executes the `mesh` step: the main job, or any asset job that includes it
    (a UI launch, a backfill), whether or not the run recorded its asset selection."""
    if run.job_name == "mesh_job" or MESH in (run.asset_selection or ()):
        return True
    if run.asset_selection or not run.execution_plan_snapshot_id:
        return False
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    return "mesh" in plan.step_keys_to_execute


def run_partition_keys(instance: dg.DagsterInstance, run: dg.DagsterRun, all_keys: list[str] | None = None) -> list[str]:
    """The image partitions a run covers: its range tags, or its single partition tag."""
    tags = run.tags
    if RANGE_START_TAG in tags:
        keys = all_keys if all_keys is not None else instance.get_dynamic_partitions(images_partitions.name)
        try:
            start, end = keys.index(tags[RANGE_START_TAG]), keys.index(tags[RANGE_END_TAG])
        except ValueError:
            return []
        return keys[start : end + 1]
    return [tags["dagster/partition"]] if "dagster/partition" in tags else []


def home_of_run(run: dg.DagsterRun, default: OrfeasHomeResource):
    """The home a run was configured with (runs carry it in their resource config)."""
    root = run.run_config.get("resources", {}).get("orfeas_home", {}).get("config", {}).get("root")
    return OrfeasHomeResource(root=root).home if root else default.home


def settle_run(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    home,
    keys: list[str],
    after: int | None = None,
    log: logging.Logger | None = None,
) -> int | None:
    """Apply a run's outcomes (those after event `after`) to its jobs; returns the last event read.

    A run still going marks its undecided images running; a run that ended fails the images
    it neither delivered nor failed, or leaves them queued when Dagster will retry the run.
    """
    from orfeas_pipelines.lib.outbox import ImageUpdate, apply_updates

    run = instance.get_run_by_id(run.run_id) or run
    records = instance.get_records_for_run(
        run.run_id,
        cursor=EventLogCursor.from_storage_id(after).to_string() if after is not None else None,
        of_type={dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_CHECK_EVALUATION,
                 dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE},
    ).records
    updates: dict[str, dict[str, ImageUpdate]] = defaultdict(dict)
    failure_message = None
    for record in records:
        event = record.event_log_entry.dagster_event
        update = _image_update(event, record.event_log_entry.timestamp)
        if update is not None:
            job_id, image_update = update
            updates[job_id][image_update.file] = image_update
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            failure_message = _root_cause(event.step_failure_data.error)
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE:
            error = getattr(event.event_specific_data, "error", None)
            failure_message = failure_message or _root_cause(error) or record.event_log_entry.message
    last = records[-1].storage_id if records else after
    ended = run.status not in IN_PROGRESS and run.status not in (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED)
    if after is None and (ended or run.status in IN_PROGRESS):
        for key in keys:
            if file_of(key) not in updates[job_id_of(key)]:
                updates[job_id_of(key)][file_of(key)] = _unsettled(run, key, ended, failure_message)
    for job_id, by_file in updates.items():
        try:
            apply_updates(home, job_id, run.run_id, by_file.values())
        except LookupError as error:
            (log or logging.getLogger(__name__)).warning(f"run {run.run_id}: {error}")
    return last


def _root_cause(error) -> str | None:
    """The first line of the innermost error of a Dagster error chain (the user's own exception)."""
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip().splitlines()[0] if error is not None and error.message.strip() else None


def _image_update(event, timestamp: float):
    """(job id, update) for a delivery or a permanent failure recorded by a run; None otherwise."""
    from orfeas_pipelines.lib.outbox import ImageUpdate

    if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and event.asset_key == MESH:
        materialization = event.step_materialization_data.materialization
        metadata = {name: value.value for name, value in materialization.metadata.items()}
        quality, outputs = metadata.pop("quality", None), metadata.pop("files", {})
        metrics = {name: value for name, value in metadata.items() if name not in ("folder", "verdict", "pictures")}
        key = materialization.partition
        update = ImageUpdate(file_of(key), "succeeded", outputs=outputs, metrics=metrics, quality=quality,
                             order=timestamp)
        return job_id_of(key), update
    if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
        evaluation = event.asset_check_evaluation_data
        if evaluation.check_name != VALID_CHECK or evaluation.passed or evaluation.partition is None:
            return None
        if evaluation.severity == dg.AssetCheckSeverity.WARN:
            return None  # a suspect mesh: delivered, its verdict travels with the delivery
        error = evaluation.metadata.get("error")
        update = ImageUpdate(file_of(evaluation.partition), "failed", error=error.value if error else None,
                             order=timestamp)
        return job_id_of(evaluation.partition), update
    return None


def _unsettled(run: dg.DagsterRun, key: str, ended: bool, failure_message: str | None):
    """An image the run has not decided: running while it runs, then failed or queued for a retry."""
    from orfeas_pipelines.lib.outbox import ImageUpdate

    if not ended:
        return ImageUpdate(file_of(key), "running")
    if run.status == dg.DagsterRunStatus.CANCELED:
        reason = f"run {run.run_id} was canceled"
    elif run.status == dg.DagsterRunStatus.FAILURE:
        reason = f"run {run.run_id} failed: {failure_message or 'see the run log'}"
    else:
        reason = f"run {run.run_id} ended without delivering this image"
    retry = run.tags.get(WILL_RETRY_TAG) == "true"
    return ImageUpdate(file_of(key), "failed", error=reason, retryable=retry)


@dg.sensor(
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keeps every job's status.json in step with Dagster: for each run that started or "
    "ended since the last tick (whoever launched it), applies its deliveries, failures and "
    "end to the jobs of its image partitions.",
)
def job_status_sensor(context: dg.SensorEvaluationContext, orfeas_home: OrfeasHomeResource):
    """Settles the runs whose status changed since the cursor (an event storage id)."""
    instance = context.instance
    after = int(context.cursor or 0)
    changes, upto = [], None
    for event_type in RUN_EVENTS:
        result = instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(event_type, after_storage_id=after), limit=RUNS_PER_TICK, ascending=True
        )
        changes += result.records
        if result.has_more and result.records:
            upto = min(upto or result.records[-1].storage_id, result.records[-1].storage_id)
    changes = sorted((record for record in changes if upto is None or record.storage_id <= upto),
                     key=lambda record: record.storage_id)
    if not changes:
        return dg.SkipReason("no run started or ended")
    all_keys = None
    settled = 0
    for run_id in dict.fromkeys(record.run_id for record in changes):
        run = instance.get_run_by_id(run_id)
        if run is None or not touches_images(instance, run):
            continue
        if all_keys is None:
            all_keys = instance.get_dynamic_partitions(images_partitions.name)
        home = home_of_run(run, orfeas_home)
        settle_run(instance, run, home, run_partition_keys(instance, run, all_keys), log=context.log)
        settled += 1
    context.log.info(f"settled {settled} runs")
    return dg.SensorResult(cursor=str(changes[-1].storage_id))


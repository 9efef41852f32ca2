"""What the daemon does, done once in this process, through the same definitions and state.

`orfeas process`, `orfeas demo`, the tests and the benchmarks all go through here:

- `tick_sensor` evaluates a sensor of the code location with the cursor the daemon stores
  for it (the sensor's instigator state, found by its selector), and stores the new one: the
  daemon and the CLI share one cursor.
- `apply_sensor_result` does what the daemon does with a result: adds the partitions,
  records the asset events, and keeps only run requests whose run key has no run yet.
- `execute_run_request` runs one request in this process with the request's own run config
  (which names the home) and settles its jobs' status from the run's events.
- `process_once` is one intake tick, its runs, then the drain (what the nightly schedule
  would run), all under `state/process.lock`, so two concurrent calls never run a job twice.
"""

import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import dagster as dg
from filelock import FileLock, Timeout

from orfeas_pipelines.lib.home import OrfeasHome, write_bytes_atomic
from orfeas_pipelines.partitions import images_partitions

LOCATION_NAME = "orfeas_pipelines"
"""The code location's name in workspace.yaml and pyproject.toml; sensor state is keyed by it."""
PARTITIONS_PER_REQUEST = 10_000
PROCESS_TAG = "orfeas/process"
"""`host:pid` of the `orfeas process` that executes a run in its own process."""
PROCESS_LOCK_TIMEOUT_SECONDS = 600
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
ONE_PLANNED_EVENT_PER_RUN = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"
"""Dagster's switch for one materialization-planned event per asset per range run instead of
one per partition; read where runs are created (this process, `make dev`'s daemon and UI)."""


@dataclass
class ProcessReport:
    """What one `process` call did: jobs it picked up and the runs it executed."""

    job_ids: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    failed_runs: list[str] = field(default_factory=list)
    skip_reason: str | None = None


def install_instance_config(home: OrfeasHome) -> Path:
    """The home's `dagster/dagster.yaml` (pool limits, the pooled event log), written from the
    project's template when missing; an existing one is the user's and is kept."""
    home.dagster_home.mkdir(parents=True, exist_ok=True)
    config = home.dagster_home / "dagster.yaml"
    if not config.exists():
        template = (files("orfeas_pipelines") / "dagster.yaml").read_text()
        write_bytes_atomic(config, template.replace("DAGSTER_HOME_DIR", str(home.dagster_home.resolve())).encode())
    return config


def init_home(home: OrfeasHome) -> Path:
    """`orfeas init`: the home's folders, its instance config and the instance's databases,
    created once so that no later command pays for them; returns the config's path."""
    home.ensure()
    config = install_instance_config(home)
    with open_instance(home) as instance:
        instance.get_runs(limit=1)
        instance.get_dynamic_partitions(images_partitions.name)
    return config


def open_instance(home: OrfeasHome) -> dg.DagsterInstance:
    """The home's persistent instance, with its dagster.yaml in place."""
    os.environ.setdefault(ONE_PLANNED_EVENT_PER_RUN, "1")
    install_instance_config(home)
    return dg.DagsterInstance.from_config(str(home.dagster_home))


def tick_sensor(instance: dg.DagsterInstance, sensor_name: str, resources: dict) -> dg.SensorResult:
    """Evaluate one sensor with its stored cursor; the new cursor is stored by `apply_sensor_result`."""
    from orfeas_pipelines.definitions import defs

    sensor = defs.resolve_sensor_def(sensor_name)
    state = _sensor_state(instance, sensor_name)
    cursor = state.instigator_data.cursor if state and state.instigator_data else None
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources, sensor_name=sensor_name) as context:
        result = sensor(context)
    if isinstance(result, dg.SkipReason):
        return dg.SensorResult(skip_reason=result.skip_message, cursor=cursor)
    return result


def apply_sensor_result(instance: dg.DagsterInstance, sensor_name: str, result: dg.SensorResult) -> list[dg.RunRequest]:
    """Record a sensor result as the daemon would; returns the run requests still to launch."""
    for request in result.dynamic_partitions_requests or []:
        keys = list(request.partition_keys)
        for start in range(0, len(keys), PARTITIONS_PER_REQUEST):
            chunk = keys[start : start + PARTITIONS_PER_REQUEST]
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, chunk)
            else:
                for key in chunk:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
    from orfeas_pipelines.storage import batched_events

    with batched_events(instance):
        for event in result.asset_events or []:
            instance.report_runless_asset_event(event)
    if result.cursor is not None:
        _store_cursor(instance, sensor_name, result.cursor)
    return [request for request in result.run_requests or [] if not _has_run(instance, request.run_key, sensor_name)]


def execute_run_request(instance: dg.DagsterInstance, request: dg.RunRequest, origin_name: str) -> dg.DagsterRun:
    """Execute one run request in this process, tagged as the daemon would tag it, and settle it."""
    from orfeas_pipelines.definitions import defs
    from orfeas_pipelines.lib.intake.claims import this_process
    from orfeas_pipelines.resources.home import OrfeasHomeResource
    from orfeas_pipelines.sensors.status import home_of_run, run_partition_keys, settle_run

    tags = {
        **request.tags,
        "dagster/run_key": request.run_key or "",
        "dagster/sensor_name": origin_name,
        PROCESS_TAG: this_process(),
    }
    outcome = defs.resolve_job_def("mesh_job").execute_in_process(
        instance=instance,
        tags=tags,
        run_config={**QUIET_RUN_CONFIG, **request.run_config},
        raise_on_error=False,
    )
    run = instance.get_run_by_id(outcome.run_id)
    settle_run(instance, run, home_of_run(run, OrfeasHomeResource()), run_partition_keys(instance, run))
    return run


def process_once(home: OrfeasHome) -> ProcessReport:
    """One intake tick, every run it requested, then one drain pass; serialised per home."""
    from orfeas_pipelines.resources.home import OrfeasHomeResource
    from orfeas_pipelines.schedules.nightly import drain_requests
    from orfeas_pipelines.sensors.intake import IntakeSettings, inbox_sensor

    orfeas_home = OrfeasHomeResource(root=str(home.root))
    report = ProcessReport()
    try:
        lock = FileLock(str(home.state / "process.lock"), timeout=PROCESS_LOCK_TIMEOUT_SECONDS)
        lock.acquire()
    except Timeout:
        raise RuntimeError(
            f"another `orfeas process` has held {home.state / 'process.lock'} for over "
            f"{PROCESS_LOCK_TIMEOUT_SECONDS} s; try again when it finishes"
        ) from None
    try:
        with open_instance(home) as instance:
            _fail_orphaned_runs(instance, report)
            resources = {"orfeas_home": orfeas_home, "intake_settings": IntakeSettings()}
            result = tick_sensor(instance, inbox_sensor.name, resources)
            report.skip_reason = result.skip_reason.skip_message if result.skip_reason else None
            _execute_all(instance, apply_sensor_result(instance, inbox_sensor.name, result), report)
            # Computed after the tick's runs, so it finds only what they left undelivered.
            _execute_all(instance, drain_requests(instance, orfeas_home, f"drain-{_now_key()}"), report)
    finally:
        lock.release()
    return report


def _fail_orphaned_runs(instance: dg.DagsterInstance, report: ProcessReport) -> None:
    """Runs a killed `orfeas process` left started on this host are failed and settled, so the
    drain that follows picks their images up (the daemon's run monitoring does this for its runs)."""
    from orfeas_pipelines.lib.intake.claims import is_gone
    from orfeas_pipelines.resources.home import OrfeasHomeResource
    from orfeas_pipelines.sensors.status import home_of_run, run_partition_keys, settle_run

    started = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    for run in instance.get_runs(started):
        owner = run.tags.get(PROCESS_TAG, "")
        if not is_gone(owner):
            continue
        instance.report_run_failed(run, f"the orfeas process {owner} running it is gone (killed?)")
        settle_run(instance, run, home_of_run(run, OrfeasHomeResource()), run_partition_keys(instance, run))
        report.failed_runs.append(run.run_id)


def _execute_all(instance: dg.DagsterInstance, requests: list[dg.RunRequest], report: ProcessReport) -> None:
    from orfeas_pipelines.partitions import job_id_of
    from orfeas_pipelines.sensors.intake import inbox_sensor
    from orfeas_pipelines.sensors.status import run_partition_keys

    for request in requests:
        run = execute_run_request(instance, request, inbox_sensor.name)
        report.run_ids.append(run.run_id)
        job_ids = dict.fromkeys(job_id_of(key) for key in run_partition_keys(instance, run))
        report.job_ids.extend(job_id for job_id in job_ids if job_id not in report.job_ids)
        if run.status != dg.DagsterRunStatus.SUCCESS:
            report.failed_runs.append(run.run_id)


def _now_key() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")


def _has_run(instance: dg.DagsterInstance, run_key: str | None, sensor_name: str) -> bool:
    if not run_key:
        return False
    tags = {"dagster/run_key": run_key, "dagster/sensor_name": sensor_name}
    return bool(instance.get_run_ids(dg.RunsFilter(tags=tags), limit=1))


def _sensor_origin(sensor_name: str):
    """The sensor's origin as the daemon names it: state is looked up by (location, repository, name)."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteInstigatorOrigin, RemoteRepositoryOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    location = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="orfeas_pipelines.definitions"), location_name=LOCATION_NAME
    )
    return RemoteInstigatorOrigin(RemoteRepositoryOrigin(location, "__repository__"), sensor_name)


def _sensor_state(instance: dg.DagsterInstance, sensor_name: str):
    from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, InstigatorType

    origin = _sensor_origin(sensor_name)
    selector_id = InstigatorState(origin, InstigatorType.SENSOR, InstigatorStatus.DECLARED_IN_CODE).selector_id
    return instance.get_instigator_state(origin.get_id(), selector_id)


def _store_cursor(instance: dg.DagsterInstance, sensor_name: str, cursor: str) -> None:
    from dagster._core.scheduler.instigation import (
        InstigatorState,
        InstigatorStatus,
        InstigatorType,
        SensorInstigatorData,
    )

    state = _sensor_state(instance, sensor_name)
    if state is None:
        state = InstigatorState(
            _sensor_origin(sensor_name),
            InstigatorType.SENSOR,
            InstigatorStatus.DECLARED_IN_CODE,
            SensorInstigatorData(cursor=cursor),
        )
        instance.add_instigator_state(state)
        return
    data = state.instigator_data or SensorInstigatorData()
    instance.update_instigator_state(state.with_data(data._replace(cursor=cursor)))

"""`orfeas process` beside the daemon's intake sensor (a real `dagster-daemon run`): each image runs once."""

import os
import socket
import subprocess
import sys
import time
from collections import Counter

import dagster as dg
import pytest

from orfeas_pipelines.deploy.cluster import service_commands, start_services, stop_services
from orfeas_pipelines.lib import outbox
from orfeas_pipelines.partitions import RANGE_END_TAG, RANGE_START_TAG, job_id_of
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.runner import ONE_PLANNED_EVENT_PER_RUN, PROCESS_TAG, apply_sensor_result, open_instance
from orfeas_pipelines.schedules.nightly import ACTIVE_RUN_STATUSES, drain_requests
from orfeas_pipelines.sensors.intake import IntakeSettings, evaluate_intake, inbox_sensor
from orfeas_pipelines.sensors.status import run_partition_keys
from orfeas_pipelines_tests.conftest import submit_images
from orfeas_pipelines_tests.test_runner import delivered_per_partition

DAEMON_READY_SECONDS = 60.0
SETTLED_SECONDS = 90.0


@pytest.fixture
def daemon(home, tmp_path):
    """`dagster-daemon run` on the test home, as `make dev` runs it; yields the home's instance."""
    with open_instance(home):
        pass  # installs the project's dagster.yaml under the home, as `make dev` finds it
    env = {
        "ORFEAS_HOME": str(home.root),
        "DAGSTER_HOME": str(home.dagster_home),
        ONE_PLANNED_EVENT_PER_RUN: "1",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    logs = tmp_path / "logs"
    pids = start_services(service_commands(workers=0, webserver_port=None), env, logs)
    try:
        with open_instance(home) as instance:
            wait_for(lambda: _sensor_ticked(instance), DAEMON_READY_SECONDS, "the daemon's first intake tick", logs)
            yield instance
    finally:
        stop_services(pids)


def _sensor_ticked(instance: dg.DagsterInstance) -> bool:
    from dagster._core.scheduler.instigation import InstigatorType

    return any(
        state.instigator_name == "inbox_sensor" and instance.get_ticks(state.instigator_origin_id, state.selector_id)
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    )


def wait_for(condition, timeout: float, what: str, logs=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    shown = "".join(path.read_text()[-3000:] for path in logs.iterdir()) if logs else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{shown}")


def settled(home, instance: dg.DagsterInstance, job_ids: list[str]) -> bool:
    if instance.get_runs(dg.RunsFilter(statuses=ACTIVE_RUN_STATUSES)):
        return False
    return all((outbox.read_status(home, job_id) or {}).get("state") == "succeeded" for job_id in job_ids)


def test_an_evaluation_from_a_cursor_read_before_anothers_tick_requests_only_new_images(home, agent, image_files):
    """The daemon reads its cursor, waits for the intake lock while `orfeas process` registers and
    runs images 1-2, then evaluates from the old cursor: it must request 3-4 only, not 1-4."""
    first_ids = submit_images(home, agent, image_files[:2])
    live_other = f"{socket.gethostname()}:{os.getppid()}"
    process = evaluate_intake(OrfeasHomeResource(), IntakeSettings(), None, owner=live_other)
    later_ids = submit_images(home, agent, image_files[2:])
    daemon = evaluate_intake(OrfeasHomeResource(), IntakeSettings(), None)

    [first_run], [later_run] = process.run_requests, daemon.run_requests
    assert (first_run.run_key, later_run.run_key) == ("images-1-2", "images-3-4")
    for run, job_ids in ((first_run, first_ids), (later_run, later_ids)):
        assert [job_id_of(run.tags[RANGE_START_TAG]), job_id_of(run.tags[RANGE_END_TAG])] == job_ids


def test_the_drain_leaves_images_another_process_is_registering_until_it_is_gone(home, agent, image_files):
    """The daemon has added the partitions of its tick but not created their run yet when
    `orfeas process` drains: the drain must not run them too."""
    job_ids = submit_images(home, agent, image_files[:2])
    daemon = subprocess.Popen(["sleep", "60"])
    try:
        owner = f"{socket.gethostname()}:{daemon.pid}"
        result = evaluate_intake(OrfeasHomeResource(), IntakeSettings(), None, owner=owner)
        with open_instance(home) as instance:
            [request] = apply_sensor_result(instance, inbox_sensor.name, result)
            assert drain_requests(instance, OrfeasHomeResource(), "drain") == []
            daemon.kill()
            daemon.wait()
            [drain] = drain_requests(instance, OrfeasHomeResource(), "drain")
        assert [job_id_of(drain.tags[RANGE_START_TAG]), job_id_of(drain.tags[RANGE_END_TAG])] == job_ids
        assert request.run_key == "images-1-2"
    finally:
        daemon.kill()
        daemon.wait()


@pytest.mark.slow
def test_process_beside_the_daemons_sensor_generates_every_image_exactly_once(daemon, home, agent, image_files):
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "orfeas_pipelines.cli", "process", "--home", str(home.root)]
    job_ids, callers = [], []
    for _ in range(3):  # drops keep arriving while the daemon ticks and `orfeas process` calls run
        job_ids += submit_images(home, agent, image_files)
        callers.append(subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        time.sleep(4)
    outputs = [caller.communicate(timeout=120)[0].decode() for caller in callers]
    assert [caller.returncode for caller in callers] == [0] * len(callers), outputs
    wait_for(lambda: settled(home, daemon, job_ids), SETTLED_SECONDS, "every job to succeed")

    counts = delivered_per_partition(home)
    twice = [
        (record.partition_key, record.run_id[:8], run.tags.get("dagster/run_key"), run.tags.get(PROCESS_TAG),
         run.tags.get("dagster/root_run_id"), run.tags.get("orfeas/purpose"))
        for record in daemon.fetch_materializations(dg.AssetKey("mesh"), limit=100).records
        if counts[record.partition_key] > 1
        for run in [daemon.get_run_by_id(record.run_id)]
    ]
    assert len(counts) == len(job_ids) == 12 and set(counts.values()) == {1}, twice
    runs = daemon.get_runs(dg.RunsFilter(job_name="mesh_job"))
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
    ran = Counter(key for run in runs for key in run_partition_keys(daemon, run))
    assert set(ran.values()) == {1}, f"an image was in more than one run: {ran}"
    # Which of the two wins each wave depends on timing (the sensor ticks every 4 s, a CLI
    # process needs about as long to start); the daemon always runs some. The deterministic
    # races are the two tests above.
    assert [run for run in runs if PROCESS_TAG not in run.tags], "the daemon ran images"

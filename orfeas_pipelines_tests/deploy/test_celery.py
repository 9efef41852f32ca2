"""Runs on two Celery GPU workers, with the real daemon, one Redis and one Postgres."""

import os
import signal
import socket
import time

import dagster as dg
import pytest

from orfeas_pipelines.deploy.cluster import service_commands, start_services, stop_services, wait_until_ready
from orfeas_pipelines.deploy.servers import start_postgres, start_redis
from orfeas_pipelines.deploy.worker import WORKER_TAG, worker_app
from orfeas_pipelines.lib import outbox
from orfeas_pipelines_tests.conftest import submit_images

FORMATS = ("stl", "ply")
MESH_RUNS = dg.RunsFilter(job_name="mesh_job")
"""The image runs; the automation sensor may also refresh mesh_quality_report in between."""


@pytest.fixture
def deployment(deployed_home, tmp_path):
    """The daemon and two GPU workers on the deployed home; yields their pids and an instance."""
    pids = start_services(service_commands(workers=2, webserver_port=None), {}, tmp_path / "logs")
    try:
        wait_until_ready(pids, ["gpu0", "gpu1"], webserver_url=None)
        with dg.DagsterInstance.get() as instance:
            yield pids, instance
    finally:
        stop_services(pids)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def all_finished(instance: dg.DagsterInstance) -> list:
    records = instance.get_run_records(MESH_RUNS)
    return records if records and all(record.dagster_run.is_finished for record in records) else []


def worker_of(run: dg.DagsterRun) -> str:
    return run.tags[WORKER_TAG].split("@")[0]


def assert_delivered_once(home, job_ids: list[str]) -> None:
    """Every job succeeded; its outbox holds one mesh per format and one preview per image (and locks)."""
    for job_id in job_ids:
        status = outbox.read_status(home, job_id)
        assert status["state"] == "succeeded", status
        expected = {"status.json"}
        for image in status["images"]:
            stem = image["file"].rsplit(".", 1)[0]
            assert image["outputs"] == {fmt: f"{stem}.{fmt}" for fmt in FORMATS}
            expected |= {f"{stem}.{fmt}" for fmt in FORMATS} | {f"{stem}.png"}
        delivered = {path.name for path in (home.outbox / job_id).iterdir() if not path.name.startswith(".")}
        assert delivered == expected


@pytest.mark.slow
def test_runs_from_several_ticks_execute_on_both_workers_at_overlapping_times(deployment, deployed_home, agent, image_files):
    _, instance = deployment
    app, queue = worker_app()
    workers = [f"gpu{index}@{socket.gethostname()}" for index in range(2)]
    # The workers stop taking tasks while two ticks queue their runs, so that the two runs start
    # together whatever the machine's speed, instead of racing the sensor's interval.
    app.control.cancel_consumer(queue, destination=workers, reply=True)
    job_ids = []
    for tick in (1, 2):
        job_ids += submit_images(deployed_home, agent, image_files, per_job=2, resolution=96)
        starting = dg.RunsFilter(job_name="mesh_job", statuses=[dg.DagsterRunStatus.STARTING])
        wait_for(lambda: len(instance.get_runs(starting)) == tick,
                 60, f"the run of tick {tick} on the queue")
    app.control.add_consumer(queue, destination=workers, reply=True)
    job_ids += submit_images(deployed_home, agent, image_files[:2], per_job=2, resolution=64)
    wait_for(lambda: len(instance.get_run_records(MESH_RUNS)) == 3, 60, "the run of tick 3")
    records = wait_for(lambda: all_finished(instance), 150, "every run to finish")

    assert [record.dagster_run.status for record in records] == [dg.DagsterRunStatus.SUCCESS] * 3
    assert {worker_of(record.dagster_run) for record in records} == {"gpu0", "gpu1"}
    assert any(
        worker_of(a.dagster_run) != worker_of(b.dagster_run) and a.start_time < b.end_time and b.start_time < a.end_time
        for a in records for b in records
    ), "no two runs on different workers overlapped in time"
    assert_delivered_once(deployed_home, job_ids)


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_detected_and_the_retry_delivers_every_image_once(
    deployment, deployed_home, agent, image_files
):
    pids, instance = deployment
    job_ids = submit_images(deployed_home, agent, image_files * 2, per_job=4, resolution=128)
    run = wait_for(lambda: instance.get_runs(MESH_RUNS), 60, "the run")[0]

    def generating():
        starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        return any(event.step_key == "mesh" for event in starts)

    wait_for(generating, 90, "mesh to start")
    victim = worker_of(instance.get_run_by_id(run.run_id))
    os.killpg(pids[victim], signal.SIGKILL)
    killed_at = time.monotonic()
    records = wait_for(lambda: len(instance.get_run_records(MESH_RUNS)) == 2 and all_finished(instance), 150, "the retry to finish")
    print(f"kill -9 of {victim} to every image delivered: {time.monotonic() - killed_at:.1f}s")

    retry, original = records
    assert original.dagster_run.status == dg.DagsterRunStatus.FAILURE
    assert retry.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    assert retry.dagster_run.tags["dagster/parent_run_id"] == run.run_id
    assert worker_of(retry.dagster_run) != victim
    assert_delivered_once(deployed_home, job_ids)
    for job_id in job_ids:
        assert run.run_id in outbox.read_status(deployed_home, job_id)["run_ids"]


@pytest.mark.slow
def test_the_deployment_recovers_from_a_redis_and_a_postgres_restart_while_idle(
    deployment, deployed_home, agent, image_files, postgres_server, redis_server
):
    _, instance = deployment
    for server, start in ((redis_server, start_redis), (postgres_server, start_postgres)):
        server.stop()
        server.pid = start(server.data_dir, port=server.port).pid  # the session fixture stops it at the end
    job_ids = submit_images(deployed_home, agent, image_files[:2], per_job=2, resolution=64)

    records = wait_for(lambda: all_finished(instance), 120, "the run after the restarts")

    assert [record.dagster_run.status for record in records] == [dg.DagsterRunStatus.SUCCESS]
    assert_delivered_once(deployed_home, job_ids)

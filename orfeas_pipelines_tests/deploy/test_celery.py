"""Runs spread over two Celery GPU workers, with the real daemon, one Redis and one Postgres."""

import time

import dagster as dg
import pytest

from orfeas_pipelines.deploy.cluster import service_commands, start_services, stop_services, wait_until_ready
from orfeas_pipelines.deploy.worker import WORKER_TAG
from orfeas_pipelines.lib import outbox
from orfeas_pipelines_tests.conftest import submit_images

TICKS = 3
RUN_TIMEOUT_SECONDS = 150


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.mark.slow
def test_runs_from_several_ticks_execute_on_both_workers_at_overlapping_times(deployed_home, agent, image_files, tmp_path):
    pids = start_services(service_commands(workers=2, webserver_port=None), {}, tmp_path / "logs")
    try:
        wait_until_ready(pids, ["gpu0", "gpu1"], webserver_url=None)
        with dg.DagsterInstance.get() as instance:
            job_ids = []
            for tick in range(1, TICKS + 1):
                # Three jobs of four images each: a run long enough to outlast the sensor's interval.
                job_ids += submit_images(deployed_home, agent, image_files * 3, per_job=4, resolution=128)
                _wait_for(lambda: len(instance.get_run_records()) >= tick, 60, f"the run of tick {tick}")
            _wait_for(
                lambda: all(record.dagster_run.is_finished for record in instance.get_run_records()),
                RUN_TIMEOUT_SECONDS, "every run to finish",
            )
            records = instance.get_run_records()
    finally:
        stop_services(pids)

    assert len(records) == TICKS
    assert [record.dagster_run.status for record in records] == [dg.DagsterRunStatus.SUCCESS] * TICKS
    workers = {record.dagster_run.run_id: record.dagster_run.tags[WORKER_TAG].split("@")[0] for record in records}
    assert set(workers.values()) == {"gpu0", "gpu1"}
    overlapping = [
        (a, b) for a in records for b in records
        if workers[a.dagster_run.run_id] < workers[b.dagster_run.run_id]
        and a.start_time < b.end_time and b.start_time < a.end_time
    ]
    assert overlapping, "no two runs on different workers overlapped in time"
    for job_id in job_ids:
        status = outbox.read_status(deployed_home, job_id)
        assert status["state"] == "succeeded", status
        for image in status["images"]:
            for filename in image["outputs"].values():
                assert (deployed_home.outbox / job_id / filename).stat().st_size > 0

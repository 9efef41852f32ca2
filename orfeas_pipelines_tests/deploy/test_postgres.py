"""The main job against a real Postgres: inbox drop, one intake tick, the range run, the outbox;
the intake ledger in the same Postgres."""

import pytest

from orfeas_pipelines.lib import outbox
from orfeas_pipelines.runner import process_once
from orfeas_pipelines_tests.conftest import submit_images
from orfeas_pipelines_tests.deploy.conftest import query


@pytest.mark.slow
def test_main_job_on_postgres_delivers_and_stores_the_run_and_its_events(deployed_home, agent, image_files, postgres_url):
    job_ids = submit_images(deployed_home, agent, image_files[:2])

    report = process_once(deployed_home)

    assert len(report.run_ids) == 1 and not report.failed_runs
    for job_id in job_ids:
        assert outbox.read_status(deployed_home, job_id)["state"] == "succeeded"
    run_id = report.run_ids[0]
    assert query(postgres_url, "SELECT status FROM runs WHERE run_id = %s", run_id) == [("SUCCESS",)]
    events = {row[0] for row in query(postgres_url, "SELECT dagster_event_type FROM event_logs WHERE run_id = %s", run_id)}
    assert {"PIPELINE_START", "ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION", "PIPELINE_SUCCESS"} <= events
    partitions = query(postgres_url, "SELECT count(*) FROM dynamic_partitions WHERE partitions_def_name = 'images'")
    assert partitions == [(2,)]
    logged = query(postgres_url, "SELECT job_id, count(*) FROM orfeas_intake.images GROUP BY job_id")
    assert sorted(logged) == sorted((job_id, 1) for job_id in job_ids)
    assert not (deployed_home.state / "intake.sqlite").exists()

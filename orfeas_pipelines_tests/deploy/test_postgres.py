"""The main job against a real Postgres: inbox drop, one intake tick, the range run, the outbox;
the intake ledger in the same Postgres; retiring settled partitions out of Dagster's table."""

from datetime import timedelta

import pytest

from orfeas_pipelines.lib import outbox
from orfeas_pipelines.runner import open_instance, process_once
from orfeas_pipelines.schedules.retire import retire_partitions
from orfeas_pipelines_tests.conftest import submit_images
from orfeas_pipelines_tests.deploy.conftest import query
from orfeas_pipelines_tests.schedules.test_retire import hand_made_job


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


def test_retiring_on_postgres_archives_in_the_ledger_and_deletes_from_dagsters_table(deployed_home, postgres_url):
    keys = hand_made_job(deployed_home, "old-job", "succeeded", outputs={"stl": "a.stl"})
    keys += hand_made_job(deployed_home, "queued-job", None)
    with open_instance(deployed_home) as instance:
        instance.add_dynamic_partitions("images", keys)
        retired = retire_partitions(instance, deployed_home, timedelta(0))

    assert [image.partition_key for image in retired] == keys[:1]
    assert query(postgres_url, "SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'images'") == [(keys[1],)]
    assert query(postgres_url, "SELECT job_id, state, outputs FROM orfeas_intake.retired") == [
        ("old-job", "succeeded", '{"stl": "a.stl"}')
    ]

"""Retiring settled jobs' image partitions: out of Dagster, archived in the ledger, never drained."""

import json
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from orfeas_pipelines.cli import main
from orfeas_pipelines.lib import outbox
from orfeas_pipelines.lib.intake.audit import utc_timestamp
from orfeas_pipelines.lib.intake.ledger import AcceptedJob, open_ledger, partition_key
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.runner import open_instance, process_once
from orfeas_pipelines.schedules.nightly import drain_keys, drain_requests
from orfeas_pipelines.schedules.retire import retire_partitions, retire_settled_partitions
from orfeas_pipelines_tests.conftest import settle_image, submit_images
from orfeas_pipelines_tests.schedules.test_nightly import ranges


def hand_made_job(home, job_id: str, state: str | None, **fields) -> list[str]:
    """A one-image job as intake writes it, settled to `state` unless None; its partition keys."""
    job = AcceptedJob(job_id, "tester", ["a.png"], [partition_key(job_id, "a.png")], ("stl",), 48, 0)
    outbox.write_queued(home, job)
    if state:
        settle_image(home, job_id, "a.png", state, **fields)
    return job.partition_keys


def partitions(instance) -> list[str]:
    return instance.get_dynamic_partitions("images")


def test_retired_partitions_leave_dagster_keep_an_archive_record_and_are_never_drained(home, agent, image_files, capsys):
    [delivered] = submit_images(home, agent, image_files[:2], per_job=2)
    assert process_once(home).run_ids
    failed = hand_made_job(home, "failed-job", "failed", error="the mesh was empty")
    queued = hand_made_job(home, "queued-job", None)
    with open_instance(home) as instance:
        instance.add_dynamic_partitions("images", failed + queued)
        assert drain_keys(instance) == failed + queued, "undelivered in Dagster's view, so drained while live"

        assert retire_partitions(instance, home, timedelta(days=1)) == []
        retired = retire_partitions(instance, home, timedelta(0))

        assert [image.partition_key for image in retired] == [
            partition_key(delivered, path.name) for path in image_files[:2]
        ] + failed
        assert partitions(instance) == queued
        assert drain_keys(instance) == queued
        assert ranges(drain_requests(instance, OrfeasHomeResource(), "drain")) == [(queued[0], queued[0])]
        assert retire_partitions(instance, home, timedelta(0)) == []
    with open_ledger(home) as ledger:
        record = ledger.retired_image(partition_key(delivered, image_files[0].name))
        assert record.job_id == delivered and record.state == "succeeded" and set(record.outputs) == {"stl", "ply"}
        assert ledger.retired_image(failed[0]).state == "failed" and ledger.retired_image(queued[0]) is None
    assert main(["status", delivered, "--home", str(home.root)]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "succeeded"


def test_the_daily_schedule_retires_what_settled_more_than_the_configured_days_ago(home, instance, monkeypatch):
    keys = hand_made_job(home, "old-job", "succeeded", outputs={"stl": "a.stl"})
    instance.add_dynamic_partitions("images", keys)

    def tick(days_later: float):
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime.now(timezone.utc) + timedelta(days=days_later),
            resources={"orfeas_home": OrfeasHomeResource()},
        )
        return retire_settled_partitions(context).skip_message

    assert tick(6) == "retired 0 image partitions of 0 jobs settled over 7 days ago" and partitions(instance) == keys
    assert tick(8) == "retired 1 image partitions of 1 jobs settled over 7 days ago" and partitions(instance) == []
    monkeypatch.setenv("ORFEAS_RETIRE_AFTER_DAYS", "soon")
    with pytest.raises(ValueError, match="^ORFEAS_RETIRE_AFTER_DAYS='soon': expected a positive number of days$"):
        tick(8)


def test_orfeas_retire_reports_what_it_retired_and_refuses_a_non_positive_age(home, capsys):
    keys = hand_made_job(home, "old-job", "succeeded", outputs={"stl": "a.stl"}) + hand_made_job(home, "new-job", "succeeded")
    path = outbox.status_path(home, "old-job")
    status = json.loads(path.read_text())
    path.write_text(json.dumps({**status, "updated_at": utc_timestamp(datetime.now(timezone.utc) - timedelta(days=3))}))
    with open_instance(home) as instance:
        instance.add_dynamic_partitions("images", keys)

    assert main(["retire", "--older-than", "2", "--home", str(home.root)]) == 0
    assert capsys.readouterr().out == "retired 1 image partitions of 1 jobs settled over 2 days ago; 1 remain\n"
    assert main(["retire", "--keep-at-most", "0", "--home", str(home.root)]) == 0
    assert capsys.readouterr().out.endswith("; 1 remain\n"), "a job settled within the hour stays"
    with pytest.raises(SystemExit):
        main(["retire", "--older-than", "0", "--home", str(home.root)])
    assert "'0' must be a positive number of days" in capsys.readouterr().err

"""The inbox sensor against a real instance: partitions and one range run per tick."""

import logging

import dagster as dg

from orfeas_pipelines.definitions import defs
from orfeas_pipelines.lib import outbox
from orfeas_pipelines.lib.intake.audit import read_audit
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.partitions import RANGE_END_TAG, RANGE_START_TAG
from orfeas_pipelines.sensors.intake import IntakeSettings, evaluate_intake, inbox_sensor
from orfeas_pipelines_tests.conftest import submit_images


def tick(instance, cursor=None, **settings):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"orfeas_home": OrfeasHomeResource(), "intake_settings": IntakeSettings(**settings)},
    )
    return inbox_sensor(context)


def test_tick_registers_good_jobs_and_requests_one_range_run(home, agent, instance, image_files):
    job_ids = submit_images(home, agent, image_files, per_job=2)
    (home.inbox / "stray.txt").write_text("not a job")

    result = tick(instance)

    [add] = result.dynamic_partitions_requests
    keys = list(add.partition_keys)
    assert add.partitions_def_name == "images"
    assert keys == [f"{job_id}/{path.name}" for job_id in job_ids for path in image_files if f"{job_id}/{path.name}" in keys]
    assert len(keys) == 4
    [run] = result.run_requests
    assert run.tags[RANGE_START_TAG] == keys[0] and run.tags[RANGE_END_TAG] == keys[-1]
    assert run.run_key == f"images-1-{result.cursor}" and result.cursor == "4"
    assert all(outbox.read_status(home, job_id)["state"] == "queued" for job_id in job_ids)
    assert (home.quarantine / "stray.txt").exists()
    decisions = sorted(line["decision"] for line in read_audit(home.audit_log))
    assert decisions == ["accepted", "accepted", "rejected"]


def test_the_tick_log_names_each_rejection(home, agent, instance, image_files, caplog):
    submit_images(home, agent, image_files[:1])
    (home.inbox / "stray.txt").write_text("not a job")
    with caplog.at_level(logging.INFO, logger="tick"):
        result = evaluate_intake(OrfeasHomeResource(), IntakeSettings(), None, log=logging.getLogger("tick"))
    assert result.run_requests
    lines = [record.getMessage() for record in caplog.records]
    assert "intake: accepted 1, rejected 1, deferred 0, waiting 0" in lines
    assert any(line.startswith("rejected 'stray.txt': not_a_job:") and "quarantine/stray.txt" in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tick"):
        evaluate_intake(OrfeasHomeResource(), IntakeSettings(), result.cursor, log=logging.getLogger("tick"))
    assert caplog.records == [], "an idle tick logs nothing"


def test_retried_tick_requests_the_same_run_and_next_tick_nothing(home, agent, instance, image_files):
    submit_images(home, agent, image_files[:2])
    first = tick(instance)
    retried = tick(instance, cursor=None)
    assert retried.run_requests[0].run_key == first.run_requests[0].run_key
    assert list(retried.dynamic_partitions_requests[0].partition_keys) == list(
        first.dynamic_partitions_requests[0].partition_keys
    )
    after = tick(instance, cursor=first.cursor)
    assert not after.run_requests and after.skip_reason
    assert after.cursor == first.cursor


def test_ticks_are_bounded_and_never_split_a_job(home, agent, instance, image_files):
    submit_images(home, agent, image_files * 3, per_job=3)
    cursor, runs = None, []
    for _ in range(5):
        result = tick(instance, cursor=cursor, max_jobs_per_tick=2, max_images_per_run=5)
        cursor = result.cursor
        runs.extend(result.run_requests)
    assert len(runs) == 4, "12 images in 4 jobs of 3, one job per run when a run holds 5"
    for request in runs:
        assert request.tags[RANGE_START_TAG].split("/")[0] == request.tags[RANGE_END_TAG].split("/")[0]
    assert not list(home.inbox.iterdir())


def test_rate_limited_jobs_wait_in_the_inbox(home, instance, image_files):
    from orfeas_pipelines.lib.intake.registry import create_agent

    slow = create_agent(home.agents_file, "slow", rate_per_minute=1)
    submit_images(home, slow, image_files[:3])
    result = tick(instance)
    assert len(list(result.dynamic_partitions_requests[0].partition_keys)) == 1
    assert len([entry for entry in home.inbox.iterdir() if not entry.name.startswith(".")]) == 2
    assert any(line["decision"] == "deferred" for line in read_audit(home.audit_log))


def test_bad_drops_are_quarantined_with_their_code_and_good_ones_beside_them_still_run(home, instance, tmp_path):
    import json
    from datetime import datetime, timezone

    from orfeas_pipelines.lib.intake.registry import create_agent
    from orfeas_pipelines_tests.lib.intake.drops import drop_bad_corpus, drop_good_job, tree_digest

    picky = create_agent(home.agents_file, "picky", formats=("stl", "obj"), max_images=2, rate_per_minute=1000)
    outside = tmp_path / "outside"
    outside.mkdir()
    now = datetime.now(timezone.utc)
    expected = drop_bad_corpus(home, picky, now, outside)
    before = {entry: tree_digest(home.inbox / entry) for entry in expected}
    good = [drop_good_job(home, picky, now, name=f"good{i}.png") for i in range(2)]

    result = tick(instance)

    keys = list(result.dynamic_partitions_requests[0].partition_keys)
    assert sorted(keys) == sorted([f"{good[0]}/good0.png", f"{good[1]}/good1.png"])
    for entry, code in expected.items():
        reason = json.loads((home.quarantine / entry / "reason.json").read_text())
        assert reason["code"] == code, entry
        assert tree_digest(home.quarantine / entry / entry) == before[entry], entry
    assert not [entry for entry in home.inbox.iterdir() if not entry.name.startswith(".")]

    instance.add_dynamic_partitions("images", keys)
    request = result.run_requests[0]
    run = defs.resolve_job_def("mesh_job").execute_in_process(instance=instance, tags=request.tags, run_config=request.run_config)
    assert run.success
    assert [outbox.read_status(home, job_id)["state"] for job_id in good] == ["succeeded", "succeeded"]


def test_a_tick_reports_source_images_with_the_facts_intake_verified(home, agent, instance, image_files):
    submit_images(home, agent, image_files[:2])
    result = tick(instance)
    keys = list(result.dynamic_partitions_requests[0].partition_keys)
    assert [event.partition for event in result.asset_events] == keys
    assert all(event.asset_key == dg.AssetKey("source_image") for event in result.asset_events)
    assert [event.metadata["job_id"].value for event in result.asset_events] == [key.split("/")[0] for key in keys]
    assert result.run_requests[0].run_config == OrfeasHomeResource().run_config(), "runs are told their home"


def test_a_tick_that_only_rejects_says_so_in_its_skip_reason(home, instance):
    (home.inbox / "stray.txt").write_text("not a job")
    result = tick(instance)
    assert not result.run_requests and "rejected 1" in result.skip_reason.skip_message


def test_the_daemon_and_process_share_one_cursor_stored_where_the_daemon_keeps_it(home, agent, image_files):
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget

    from orfeas_pipelines.runner import LOCATION_NAME, open_instance, process_once

    submit_images(home, agent, image_files[:2])
    assert len(process_once(home).run_ids) == 1
    with open_instance(home) as instance:
        target = ModuleTarget(module_name="orfeas_pipelines.definitions", attribute=None, working_directory=None,
                              location_name=LOCATION_NAME)
        with WorkspaceProcessContext(instance, target) as workspace:
            location = workspace.create_request_context().get_code_location(LOCATION_NAME)
            sensor = location.get_repository("__repository__").get_sensor(inbox_sensor.name)
            state = instance.get_instigator_state(sensor.get_remote_origin_id(), sensor.selector_id)
        assert state.instigator_data.cursor == "2", "the daemon finds the cursor orfeas process stored"
    assert process_once(home).run_ids == [], "nothing is registered twice"

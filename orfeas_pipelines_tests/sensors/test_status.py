"""The status sensor settles status.json from Dagster's events, for every run that touches images."""

import json

import dagster as dg
import pytest

from orfeas_pipelines.assets.meshes import MESH
from orfeas_pipelines.definitions import defs
from orfeas_pipelines.lib import outbox
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.sensors.status import job_status_sensor, run_partition_keys
from orfeas_pipelines_tests.conftest import register_pending, submit_images


def status_tick(instance, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"orfeas_home": OrfeasHomeResource()}) as context:
        return job_status_sensor(context)


def ui_run(instance, key, **run_config):
    """What the UI launches for one partition: the implicit asset job, subset to `mesh`."""
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={MESH})
    return job.execute_in_process(instance=instance, partition_key=key, run_config=run_config or None, raise_on_error=False)


def test_a_run_launched_from_the_ui_is_settled_by_the_sensor(home, agent, instance, image_files):
    [job_id] = submit_images(home, agent, image_files[:1])
    [key] = register_pending(home, instance).dynamic_partitions_requests[0].partition_keys

    result = ui_run(instance, key)

    run = instance.get_run_by_id(result.run_id)
    assert run.job_name == "__ASSET_JOB" and run_partition_keys(instance, run) == [key]
    status_tick(instance)
    status = outbox.read_status(home, job_id)
    assert status["state"] == "succeeded" and status["run_ids"] == [result.run_id]


def test_a_failed_run_fails_the_images_it_did_not_deliver_with_its_reason(home, agent, instance, image_files):
    [job_id] = submit_images(home, agent, image_files[:2], per_job=2)
    request = register_pending(home, instance).run_requests[0]
    config = {**request.run_config, "resources": {**request.run_config["resources"],
              "mesh_generator": {"config": {"backend": "no-such-backend"}}}}
    result = defs.resolve_job_def("mesh_job").execute_in_process(
        instance=instance, tags=request.tags, run_config=config, raise_on_error=False
    )
    assert not result.success

    assert isinstance(status_tick(instance), dg.SensorResult)
    status = outbox.read_status(home, job_id)
    assert status["state"] == "failed" and status["progress"] == 100
    assert all("no-such-backend" in image["error"] for image in status["images"])


def test_a_settle_that_fails_half_way_is_repaired_by_the_next_tick(home, agent, instance, image_files, monkeypatch):
    job_ids = submit_images(home, agent, image_files[:2])
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    runs = [ui_run(instance, key).run_id for key in keys]
    for job_id in job_ids:  # the runs settled themselves; forget it, as if their writes were lost
        status = outbox.read_status(home, job_id)
        status["images"][0].update(state="running", outputs={}, delivered_by=[])
        status.update(state="running", run_ids=[])
        outbox.status_path(home, job_id).write_text(json.dumps(status))
    original = outbox.apply_updates
    calls = []

    def fail_on_the_second_job(home_, job_id, run_id, updates):
        calls.append(job_id)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return original(home_, job_id, run_id, updates)

    monkeypatch.setattr(outbox, "apply_updates", fail_on_the_second_job)
    with pytest.raises(OSError):
        status_tick(instance)
    assert [outbox.read_status(home, job_id)["state"] for job_id in job_ids] == ["succeeded", "running"]

    result = status_tick(instance)
    assert [outbox.read_status(home, job_id)["state"] for job_id in job_ids] == ["succeeded", "succeeded"]
    assert outbox.read_status(home, job_ids[1])["run_ids"] == [runs[1]]
    assert isinstance(status_tick(instance, cursor=result.cursor), dg.SkipReason)


def test_a_manual_rematerialization_is_recorded_and_a_failed_one_changes_nothing(home, agent, instance, image_files):
    [job_id] = submit_images(home, agent, image_files[:1])
    [key] = register_pending(home, instance).dynamic_partitions_requests[0].partition_keys
    first = ui_run(instance, key).run_id
    second = ui_run(instance, key).run_id
    failed = ui_run(instance, key, resources={"mesh_generator": {"config": {"backend": "no-such-backend"}}}).run_id
    assert instance.get_run_by_id(failed).status == dg.DagsterRunStatus.FAILURE
    status_tick(instance)

    status = outbox.read_status(home, job_id)
    assert status["state"] == "succeeded" and status["run_ids"] == [first, second]
    assert [delivery["run_id"] for delivery in status["images"][0]["delivered_by"]] == [first, second]


def test_a_run_dagster_will_retry_leaves_its_images_queued(home, agent, instance, image_files):
    [job_id] = submit_images(home, agent, image_files[:1])
    request = register_pending(home, instance).run_requests[0]
    config = {"resources": {**request.run_config["resources"], "mesh_generator": {"config": {"backend": "no-such-backend"}}}}
    result = defs.resolve_job_def("mesh_job").execute_in_process(
        instance=instance, tags={**request.tags, "dagster/will_retry": "true"}, run_config=config, raise_on_error=False
    )
    assert not result.success
    status_tick(instance)
    [image] = outbox.read_status(home, job_id)["images"]
    assert image["state"] == "queued" and image["retryable"] and "no-such-backend" in image["error"]

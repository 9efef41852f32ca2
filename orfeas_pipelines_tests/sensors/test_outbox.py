"""Run-status sensors settle images a run did not deliver."""

import dagster as dg

from orfeas_pipelines.lib import outbox
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.sensors.outbox import run_partition_keys, settle_run
from orfeas_pipelines_tests.conftest import register_pending, submit_images


def test_failed_run_fails_the_undelivered_images_with_the_reason(home, agent, instance, image_files):
    job_ids = submit_images(home, agent, image_files[:2], per_job=2)
    request = register_pending(home, instance).run_requests[0]
    keys = list(instance.get_dynamic_partitions("images"))
    run = dg.DagsterRun(job_name="mesh_job", run_id="run-1", tags=request.tags)
    assert run_partition_keys(instance, run) == keys

    outbox.record_image(home, job_ids[0], image_files[0].name, "succeeded", outputs={"stl": "star.stl"})
    assert settle_run(OrfeasHomeResource(), instance, run, "run run-1 failed: boom") == 1

    status = outbox.read_status(home, job_ids[0])
    assert status["state"] == "failed"
    states = {image["file"]: (image["state"], image.get("error")) for image in status["images"]}
    assert states[image_files[0].name] == ("succeeded", None)
    assert states[image_files[1].name] == ("failed", "run run-1 failed: boom")

"""`orfeas process`: the daemon's work once, in this process, and safe to run twice at once."""

import os
import socket
import subprocess
import sys
from collections import Counter

import dagster as dg
import pytest

from orfeas_pipelines.assets.meshes import MESH
from orfeas_pipelines.definitions import defs
from orfeas_pipelines.lib import outbox
from orfeas_pipelines.partitions import range_tags
from orfeas_pipelines.runner import PROCESS_TAG, open_instance, process_once
from orfeas_pipelines_tests.conftest import register_pending, submit_images


def delivered_per_partition(home):
    with open_instance(home) as instance:
        records = instance.fetch_materializations(MESH, limit=1000).records
        return Counter(record.partition_key for record in records)


@pytest.mark.slow
@pytest.mark.parametrize("callers", [2, 4])
def test_concurrent_process_calls_generate_every_image_exactly_once(home, agent, image_files, callers):
    job_ids = submit_images(home, agent, image_files * 3)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "orfeas_pipelines.cli", "process", "--home", str(home.root)]
    workers = [subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(callers)]
    outputs = [worker.communicate(timeout=300) for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * callers, outputs
    counts = delivered_per_partition(home)
    assert len(counts) == len(job_ids) and set(counts.values()) == {1}, counts
    assert all(outbox.read_status(home, job_id)["state"] == "succeeded" for job_id in job_ids)


def test_a_run_left_started_by_a_killed_process_is_failed_and_its_images_drained(home, agent, image_files):
    job_ids = submit_images(home, agent, image_files[:2])
    dead = subprocess.Popen(["true"])
    dead.wait()
    with open_instance(home) as persistent:
        keys = list(register_pending(home, persistent).dynamic_partitions_requests[0].partition_keys)
        orphan = persistent.create_run_for_job(
            job_def=defs.resolve_job_def("mesh_job"),
            tags={**range_tags(keys), PROCESS_TAG: f"{socket.gethostname()}:{dead.pid}"},
            status=dg.DagsterRunStatus.STARTED,
        )

    report = process_once(home)

    assert orphan.run_id in report.failed_runs and len(report.run_ids) == 1, "the drain ran the orphan's images"
    with open_instance(home) as persistent:
        assert persistent.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.FAILURE
    assert all(outbox.read_status(home, job_id)["state"] == "succeeded" for job_id in job_ids)

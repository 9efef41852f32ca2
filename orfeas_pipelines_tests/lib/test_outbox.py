import threading

import pytest

from orfeas_pipelines.lib.intake.ledger import AcceptedJob
from orfeas_pipelines.lib.outbox import (
    mark_run_failed,
    mark_running,
    read_status,
    record_image,
    status_path,
    write_queued,
    write_rejected,
)
from orfeas_pipelines_tests.lib.intake.drops import make_home

FILES = ["a.png", "b.png"]


@pytest.fixture
def home(tmp_path):
    return make_home(tmp_path / "home")


def queued(home, job_id="job-1", files=FILES):
    job = AcceptedJob(job_id, "agent-a", list(files), [f"{job_id}/{f}" for f in files], ("stl",), 128, 0)
    write_queued(home, job)
    return job


def states(home, job_id="job-1"):
    status = read_status(home, job_id)
    return status["state"], [image["state"] for image in status["images"]]


def test_a_job_moves_from_queued_through_running_to_succeeded(home):
    queued(home)
    assert states(home) == ("queued", ["queued", "queued"])
    mark_running(home, "job-1", "run-1")
    assert states(home) == ("running", ["running", "running"])
    record_image(home, "job-1", "a.png", "succeeded", {"stl": "a.stl"}, metrics={"faces": 10})
    assert states(home) == ("running", ["succeeded", "running"])
    record_image(home, "job-1", "b.png", "succeeded", {"stl": "b.stl"})
    status = read_status(home, "job-1")
    assert status["state"] == "succeeded" and status["run_ids"] == ["run-1"]
    expected = {"file": "a.png", "state": "succeeded", "outputs": {"stl": "a.stl"}, "metrics": {"faces": 10}}
    assert status["images"][0] == expected
    assert status["agent_id"] == "agent-a" and status["updated_at"].endswith("Z")


def test_a_failed_image_fails_only_itself_and_the_job_ends_failed(home):
    queued(home)
    mark_running(home, "job-1", "run-1")
    record_image(home, "job-1", "a.png", "failed", error="a.png: not a decodable image")
    record_image(home, "job-1", "b.png", "succeeded", {"stl": "b.stl"})
    status = read_status(home, "job-1")
    assert status["state"] == "failed"
    assert status["images"][0]["error"] == "a.png: not a decodable image"
    assert "error" not in status["images"][1]


def test_a_failed_run_fails_only_unfinished_images_and_terminal_states_stay(home):
    queued(home)
    mark_running(home, "job-1", "run-1")
    record_image(home, "job-1", "a.png", "succeeded", {"stl": "a.stl"})
    mark_run_failed(home, "job-1", "run-1", "run crashed")
    status = read_status(home, "job-1")
    assert [image["state"] for image in status["images"]] == ["succeeded", "failed"]
    assert status["images"][1]["error"] == "run crashed" and status["run_ids"] == ["run-1"]
    mark_running(home, "job-1", "run-2")
    record_image(home, "job-1", "a.png", "failed", error="late failure")
    assert states(home) == ("failed", ["succeeded", "failed"])
    assert read_status(home, "job-1")["run_ids"] == ["run-1"]


def test_a_retried_run_may_turn_a_failed_image_into_a_success(home):
    queued(home, files=["a.png"])
    record_image(home, "job-1", "a.png", "failed", error="out of memory")
    record_image(home, "job-1", "a.png", "succeeded", {"stl": "a.stl"})
    status = read_status(home, "job-1")
    assert status["state"] == "succeeded" and "error" not in status["images"][0]


def test_run_ids_are_recorded_once_each(home):
    queued(home)
    for run_id in ("run-1", "run-1", "run-2"):
        mark_running(home, "job-1", run_id)
    assert read_status(home, "job-1")["run_ids"] == ["run-1", "run-2"]


def test_rejected_status_never_replaces_an_accepted_job(home):
    assert write_rejected(home, "job-9", "agent-a", "bad_signature", "signature does not match")
    status = read_status(home, "job-9")
    assert status["state"] == "rejected" and status["reason"]["code"] == "bad_signature" and status["images"] == []
    queued(home)
    assert not write_rejected(home, "job-1", "agent-a", "replay", "job id job-1 was already used")
    assert read_status(home, "job-1")["state"] == "queued"
    queued(home, job_id="job-9")
    assert read_status(home, "job-9")["state"] == "queued"


def test_unknown_jobs_and_images_are_clear_errors(home):
    assert read_status(home, "nope") is None
    with pytest.raises(LookupError, match="job nope has no status.json"):
        mark_running(home, "nope", "run-1")
    queued(home)
    with pytest.raises(LookupError, match="job job-1 has no image c.png"):
        record_image(home, "job-1", "c.png", "succeeded")
    with pytest.raises(ValueError, match="succeeded or failed"):
        record_image(home, "job-1", "a.png", "running")


def test_concurrent_updates_lose_nothing_and_leave_no_temp_files(home):
    files = [f"img{index}.png" for index in range(16)]
    queued(home, files=files)
    mark_running(home, "job-1", "run-1")
    threads = [
        threading.Thread(target=record_image, args=(home, "job-1", file, "succeeded", {"stl": f"{file}.stl"}))
        for file in files
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert states(home) == ("succeeded", ["succeeded"] * 16)
    leftovers = [path.name for path in status_path(home, "job-1").parent.iterdir() if path.name.endswith(".tmp")]
    assert leftovers == []

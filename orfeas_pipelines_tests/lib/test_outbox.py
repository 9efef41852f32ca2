import threading

import pytest

from orfeas_pipelines.lib.intake.ledger import AcceptedJob
from orfeas_pipelines.lib.outbox import ImageUpdate, apply_updates, read_status, status_path, write_queued, write_rejected
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


def delivered(file, at=1.0, **metrics):
    return ImageUpdate(file, "succeeded", outputs={"stl": file.replace(".png", ".stl")}, metrics=metrics, order=at)


def test_a_job_moves_from_queued_through_running_to_succeeded_with_progress(home):
    queued(home)
    assert states(home) == ("queued", ["queued", "queued"]) and read_status(home, "job-1")["progress"] == 0
    apply_updates(home, "job-1", "run-1", [ImageUpdate("a.png", "running"), ImageUpdate("b.png", "running")])
    assert states(home) == ("running", ["running", "running"]) and read_status(home, "job-1")["progress"] == 10
    apply_updates(home, "job-1", "run-1", [delivered("a.png", faces=10)])
    assert states(home) == ("running", ["succeeded", "running"]) and read_status(home, "job-1")["progress"] == 55
    apply_updates(home, "job-1", "run-1", [delivered("b.png")])
    status = read_status(home, "job-1")
    assert status["state"] == "succeeded" and status["run_ids"] == ["run-1"] and status["progress"] == 100
    assert status["images"][0] == {
        "file": "a.png", "state": "succeeded", "outputs": {"stl": "a.stl"}, "metrics": {"faces": 10},
        "delivered_by": [{"run_id": "run-1", "at": 1.0}],
    }
    assert status["agent_id"] == "agent-a" and status["updated_at"].endswith("Z")


def test_a_failed_image_fails_only_itself_and_the_job_ends_failed(home):
    queued(home)
    apply_updates(home, "job-1", "run-1", [ImageUpdate("a.png", "failed", error="a.png: not a decodable image"),
                                           delivered("b.png")])
    status = read_status(home, "job-1")
    assert status["state"] == "failed"
    assert status["images"][0]["error"] == "a.png: not a decodable image" and "error" not in status["images"][1]


def test_a_delivery_is_never_undone_and_a_failed_run_does_not_claim_the_job(home):
    queued(home)
    apply_updates(home, "job-1", "run-1", [delivered("a.png"), delivered("b.png")])
    changed = apply_updates(home, "job-1", "run-2", [ImageUpdate("a.png", "running"), ImageUpdate("a.png", "failed", error="late")])
    assert not changed and read_status(home, "job-1")["run_ids"] == ["run-1"]
    assert states(home) == ("succeeded", ["succeeded", "succeeded"])


def test_a_later_delivery_is_recorded_and_an_older_one_applied_late_is_ignored(home):
    queued(home, files=["a.png"])
    apply_updates(home, "job-1", "run-1", [delivered("a.png", at=1.0, faces=1)])
    apply_updates(home, "job-1", "run-2", [delivered("a.png", at=2.0, faces=2)])
    assert not apply_updates(home, "job-1", "run-1", [delivered("a.png", at=1.0, faces=1)])
    [image] = read_status(home, "job-1")["images"]
    assert image["metrics"] == {"faces": 2} and [d["run_id"] for d in image["delivered_by"]] == ["run-1", "run-2"]


def test_a_failure_a_retry_can_fix_stays_queued_and_a_retry_may_succeed(home):
    queued(home, files=["a.png"])
    apply_updates(home, "job-1", "run-1", [ImageUpdate("a.png", "failed", error="out of memory", retryable=True)])
    assert states(home) == ("queued", ["queued"])
    assert read_status(home, "job-1")["images"][0]["retryable"] is True
    apply_updates(home, "job-1", "run-1", [ImageUpdate("a.png", "failed", error="run failed")])
    assert states(home) == ("failed", ["failed"])
    apply_updates(home, "job-1", "run-2", [ImageUpdate("a.png", "running")])
    apply_updates(home, "job-1", "run-2", [delivered("a.png")])
    status = read_status(home, "job-1")
    assert status["state"] == "succeeded" and "error" not in status["images"][0]
    assert status["run_ids"] == ["run-1", "run-2"]


def test_applying_the_same_updates_twice_changes_nothing(home):
    queued(home)
    updates = [ImageUpdate("a.png", "running"), delivered("b.png")]
    assert apply_updates(home, "job-1", "run-1", updates)
    before = status_path(home, "job-1").read_text()
    assert not apply_updates(home, "job-1", "run-1", updates)
    assert status_path(home, "job-1").read_text() == before


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
        apply_updates(home, "nope", "run-1", [ImageUpdate("a.png", "running")])
    queued(home)
    with pytest.raises(LookupError, match="job job-1 has no image c.png"):
        apply_updates(home, "job-1", "run-1", [delivered("c.png")])


def test_concurrent_updates_lose_nothing_and_leave_no_temp_files(home):
    files = [f"img{index}.png" for index in range(16)]
    queued(home, files=files)
    threads = [threading.Thread(target=apply_updates, args=(home, "job-1", f"run-{file}", [delivered(file)])) for file in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert states(home) == ("succeeded", ["succeeded"] * 16)
    assert len(read_status(home, "job-1")["run_ids"]) == 16
    leftovers = [path.name for path in status_path(home, "job-1").parent.iterdir() if path.name.endswith(".tmp")]
    assert leftovers == []

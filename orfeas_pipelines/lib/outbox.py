"""`outbox/<job_id>/status.json`: what an agent polls to learn how its job went.

The intake writes "queued" (or "rejected"); the runs move images to running and then to
succeeded or failed. Several processes update one file (the run worker and the daemon's
run-status sensors), so every update is read-modify-write under a per-job file lock and
lands atomically (temp file + rename).

The job's state is derived from its images: all terminal → succeeded if every image
succeeded, else failed; any running → running; else queued. A terminal image never goes
back to queued or running, and a success is never overwritten by a failure; a failed image
may still become succeeded when a retried run produces it.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from filelock import FileLock

from orfeas_pipelines.lib.home import OrfeasHome, write_json_atomic
from orfeas_pipelines.lib.intake.audit import utc_timestamp

if TYPE_CHECKING:
    from orfeas_pipelines.lib.intake.ledger import AcceptedJob

STATUS_NAME = "status.json"
JOB_STATES = ("queued", "running", "succeeded", "failed", "rejected")
TERMINAL_IMAGE_STATES = ("succeeded", "failed")


def status_path(home: OrfeasHome, job_id: str) -> Path:
    return home.outbox / job_id / STATUS_NAME


def read_status(home: OrfeasHome, job_id: str) -> dict | None:
    """The job's status.json, or None if the job has none."""
    try:
        return json.loads(status_path(home, job_id).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def write_queued(home: OrfeasHome, job: AcceptedJob) -> None:
    """An accepted job: every image queued. Replaces any earlier status (e.g. a forged rejection).

    The intake writes this before any run knows the job, so a job whose outbox folder is
    brand new needs no lock (saving a file creation per job at 10,000 jobs per tick).
    """
    images = [{"file": file, "state": "queued", "outputs": {}, "metrics": {}} for file in job.files]
    status = {"job_id": job.job_id, "agent_id": job.agent_id, "images": images, "run_ids": []}
    try:
        (home.outbox / job.job_id).mkdir(parents=True)
    except FileExistsError:
        with _locked(home, job.job_id):
            _write(home, status, "queued")
        return
    _write(home, status, "queued")


def write_rejected(home: OrfeasHome, job_id: str, agent_id: str, code: str, message: str) -> bool:
    """A rejected job; never replaces the status of an accepted job. Returns whether it wrote."""
    with _locked(home, job_id):
        current = read_status(home, job_id)
        if current is not None and current["state"] != "rejected":
            return False
        status = {
            "job_id": job_id,
            "agent_id": agent_id,
            "images": [],
            "run_ids": [],
            "reason": {"code": code, "message": message},
        }
        _write(home, status, "rejected")
        return True


def mark_running(home: OrfeasHome, job_id: str, run_id: str) -> None:
    """A run started on the job: its queued images become running. No-op once the job is terminal."""
    with _locked(home, job_id):
        status = _require(home, job_id)
        if status["state"] not in ("queued", "running"):
            return
        for image in status["images"]:
            if image["state"] == "queued":
                image["state"] = "running"
        _add_run(status, run_id)
        _write(home, status)


def record_image(
    home: OrfeasHome,
    job_id: str,
    file: str,
    state: Literal["succeeded", "failed"],
    outputs: dict[str, str] | None = None,
    error: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> None:
    """The result of one image. A succeeded image is final; a failed one may later succeed."""
    if state not in TERMINAL_IMAGE_STATES:
        raise ValueError(f"image state must be succeeded or failed, not {state!r}")
    with _locked(home, job_id):
        status = _require(home, job_id)
        image = next((item for item in status["images"] if item["file"] == file), None)
        if image is None:
            raise LookupError(f"job {job_id} has no image {file}")
        if image["state"] == "succeeded":
            return
        image.update(state=state, outputs=dict(outputs or {}), metrics=dict(metrics or {}))
        image.pop("error", None)
        if error is not None:
            image["error"] = error
        _write(home, status)


def mark_run_failed(home: OrfeasHome, job_id: str, run_id: str, error: str) -> None:
    """A run ended in failure: every image it left unfinished fails with `error`."""
    with _locked(home, job_id):
        status = _require(home, job_id)
        if status["state"] == "rejected":
            return
        for image in status["images"]:
            if image["state"] not in TERMINAL_IMAGE_STATES:
                image["state"] = "failed"
                image["error"] = error
        _add_run(status, run_id)
        _write(home, status)


def job_state(images: list[dict]) -> str:
    states = [image["state"] for image in images]
    if states and all(state in TERMINAL_IMAGE_STATES for state in states):
        return "succeeded" if all(state == "succeeded" for state in states) else "failed"
    return "running" if "running" in states else "queued"


def _locked(home: OrfeasHome, job_id: str) -> FileLock:
    folder = home.outbox / job_id
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / ".status.lock"))


def _require(home: OrfeasHome, job_id: str) -> dict:
    status = read_status(home, job_id)
    if status is None:
        raise LookupError(f"job {job_id} has no status.json in {home.outbox / job_id}")
    return status


def _add_run(status: dict, run_id: str) -> None:
    if run_id not in status["run_ids"]:
        status["run_ids"].append(run_id)


def _write(home: OrfeasHome, status: dict, state: str | None = None) -> None:
    status["state"] = state or job_state(status["images"])
    status["updated_at"] = utc_timestamp(datetime.now(timezone.utc))
    write_json_atomic(status_path(home, status["job_id"]), status)

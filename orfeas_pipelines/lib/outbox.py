"""`outbox/<job_id>/status.json`: what an agent polls to learn how its job went.

This module is the only code that writes a status file. Intake writes a job's first state
("queued" or "rejected"); after that every change is an `ImageUpdate` derived from Dagster's
event log (a run started, an image was delivered or failed, a run ended) and applied here.
Several processes apply updates (the run itself, the daemon's status sensor, `orfeas
process`), so every update is read-modify-write under a per-job file lock and lands
atomically (temp file + rename). Applying the same updates twice gives the same file, which
is what lets a later evaluation repair one that failed half way.

Rules, per image: a delivery is final and is never undone by a failure, though a later
delivery (a manual re-materialization) replaces the outputs and is recorded in
`delivered_by` (run and time of each delivery); a failure that can succeed on retry leaves the image queued for that retry;
a new run may pick up a failed image again. A run's id is added to the job only when that
run changed one of its images. The job's state and progress are derived from its images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal

from filelock import FileLock

from orfeas_pipelines.lib.home import OrfeasHome, write_json_atomic
from orfeas_pipelines.lib.intake.audit import utc_timestamp

if TYPE_CHECKING:
    from orfeas_pipelines.lib.intake.ledger import AcceptedJob

STATUS_NAME = "status.json"
JOB_STATES = ("queued", "running", "succeeded", "failed", "rejected")
TERMINAL_IMAGE_STATES = ("succeeded", "failed")
TERMINAL_JOB_STATES = ("succeeded", "failed", "rejected")
IMAGE_PROGRESS = {"queued": 0, "running": 10, "succeeded": 100, "failed": 100}
"""An image's share of its job's progress: a started image counts a little, a settled one fully."""

ImageState = Literal["queued", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class ImageUpdate:
    """One image's new state as a run reported it.

    `order` is when the fact was recorded (the event's timestamp), so that an older delivery
    applied late never replaces a newer one.
    """

    file: str
    state: ImageState
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = False
    order: float = 0.0


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


def apply_updates(home: OrfeasHome, job_id: str, run_id: str, updates: Iterable[ImageUpdate]) -> bool:
    """Apply one run's updates to one job in a single locked write; returns whether anything changed.

    Raises LookupError when the job has no status (not an accepted job).
    """
    with _locked(home, job_id):
        status = read_status(home, job_id)
        if status is None:
            raise LookupError(f"job {job_id} has no status.json in {home.outbox / job_id}")
        if status["state"] == "rejected":
            return False
        images = {image["file"]: image for image in status["images"]}
        changed = False
        for update in updates:
            image = images.get(update.file)
            if image is None:
                raise LookupError(f"job {job_id} has no image {update.file}")
            changed |= _apply(image, update, run_id)
        if not changed:
            return False
        if run_id not in status["run_ids"]:
            status["run_ids"].append(run_id)
        _write(home, status)
        return True


def job_state(images: list[dict]) -> str:
    states = [image["state"] for image in images]
    if states and all(state in TERMINAL_IMAGE_STATES for state in states):
        return "succeeded" if all(state == "succeeded" for state in states) else "failed"
    return "running" if "running" in states or "succeeded" in states or "failed" in states else "queued"


def job_progress(images: list[dict]) -> int:
    """0-100: settled images count fully, started ones a little; a job with no images is done."""
    if not images:
        return 100
    return round(sum(IMAGE_PROGRESS[image["state"]] for image in images) / len(images))


def _apply(image: dict, update: ImageUpdate, run_id: str) -> bool:
    """One image's transition; returns whether the image changed."""
    before = json.dumps(image, sort_keys=True)
    current = image["state"]
    if update.state == "succeeded":
        deliveries = image.get("delivered_by", [])
        if any(delivery["at"] >= update.order for delivery in deliveries):
            return False
        image.clear()
        image.update(file=update.file, state="succeeded", outputs=dict(update.outputs), metrics=dict(update.metrics))
        if update.quality is not None:
            image["quality"] = dict(update.quality)
        image["delivered_by"] = deliveries + [{"run_id": run_id, "at": update.order}]
    elif current == "succeeded":
        return False
    elif update.state == "failed" and update.retryable:
        _reset(image, "queued", error=update.error)
        image["retryable"] = True
    elif update.state == "failed":
        _reset(image, "failed", error=update.error, metrics=update.metrics)
        if update.quality is not None:
            image["quality"] = dict(update.quality)
    elif update.state == "running":
        _reset(image, "running")
    else:
        _reset(image, "queued")
    return json.dumps(image, sort_keys=True) != before


def _reset(image: dict, state: str, error: str | None = None, metrics: dict | None = None) -> None:
    file = image["file"]
    image.clear()
    image.update(file=file, state=state, outputs={}, metrics=dict(metrics or {}))
    if error is not None:
        image["error"] = error


def _locked(home: OrfeasHome, job_id: str) -> FileLock:
    folder = home.outbox / job_id
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / ".status.lock"))


def _write(home: OrfeasHome, status: dict, state: str | None = None) -> None:
    status["state"] = state or job_state(status["images"])
    status["progress"] = 100 if status["state"] == "rejected" else job_progress(status["images"])
    status["updated_at"] = utc_timestamp(datetime.now(timezone.utc))
    write_json_atomic(status_path(home, status["job_id"]), status)

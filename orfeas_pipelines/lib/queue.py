"""Where the accepted jobs stand: queue depth, queue positions and images by final state.

The ledger's image log orders every accepted image; a job is open until its status.json
says it is terminal. The tracker keeps the open jobs in log order with their counts of
waiting and running images, re-reading a status file only when its mtime changed, so a
refresh costs one ledger query for new images plus one stat per open job. A job that
finished is written to `state/metrics.sqlite` (with its images' final states) and never
looked at again, also after a restart: the tracker then starts from the oldest job that
was still open.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from orfeas_pipelines.lib import metrics
from orfeas_pipelines.lib.home import OrfeasHome
from orfeas_pipelines.lib.intake.ledger import IntakeLedger, ledger_exists, open_ledger
from orfeas_pipelines.lib.outbox import TERMINAL_IMAGE_STATES, read_status, status_path

_TERMINAL_JOB_STATES = ("succeeded", "failed", "rejected")
_READ_BATCH = 10_000


@dataclass(frozen=True)
class QueueDepth:
    inbox_entries: int
    images_waiting: int
    images_running: int


@dataclass
class _OpenJob:
    first_seq: int
    images: int
    waiting: int
    running: int = 0
    mtime_ns: int = -1


class JobTracker:
    """Open jobs in ledger order; thread-safe; `refresh` runs at most once per `min_interval`."""

    def __init__(self, home: OrfeasHome, min_interval: float = 1.0):
        self.home = home
        self.min_interval = min_interval
        self._lock = threading.Lock()
        self._db = metrics.connect(home)
        self._open: dict[str, _OpenJob] = {}
        self._ahead: dict[str, int] = {}
        self._after_seq: int | None = None
        self._finished: set[str] = set()
        self._refreshed_at = 0.0

    def refresh(self, force: bool = False) -> None:
        """Read new ledger images and changed status files; skipped if another thread is at it."""
        if not force and time.monotonic() - self._refreshed_at < self.min_interval:
            return
        if not self._lock.acquire(blocking=force):
            return
        try:
            self._refresh()
            self._refreshed_at = time.monotonic()
        finally:
            self._lock.release()

    def queue_position(self, job_id: str) -> int | None:
        """Unfinished images ahead of the job in the image log (None if the job is not open)."""
        self.refresh()
        return self._ahead.get(job_id)

    def depth(self) -> QueueDepth:
        open_jobs = list(self._open.values())
        return QueueDepth(
            inbox_entries=_count_inbox_entries(self.home),
            images_waiting=sum(job.waiting for job in open_jobs),
            images_running=sum(job.running for job in open_jobs),
        )

    def finished_images(self) -> dict[str, int]:
        row = self._db.execute("SELECT COALESCE(SUM(succeeded), 0), COALESCE(SUM(failed), 0) FROM finished_jobs")
        succeeded, failed = row.fetchone()
        return {"succeeded": int(succeeded), "failed": int(failed)}

    def _refresh(self) -> None:
        if not ledger_exists(self.home):
            return
        if self._after_seq is None:
            self._after_seq = self._start_seq()
        with open_ledger(self.home) as ledger:
            self._read_new_images(ledger)
        for job_id, job in list(self._open.items()):
            self._update(job_id, job)
        ahead = 0
        self._ahead = {}
        for job_id, job in self._open.items():
            self._ahead[job_id] = ahead
            ahead += job.waiting + job.running
        frontier = next(iter(self._open.values())).first_seq - 1 if self._open else self._after_seq
        self._db.execute("INSERT OR REPLACE INTO settings VALUES ('tracker_frontier_seq', ?)", (frontier,))

    def _start_seq(self) -> int:
        """Resume after the oldest job open at the last refresh; finished jobs after it are skipped."""
        row = self._db.execute("SELECT value FROM settings WHERE name = 'tracker_frontier_seq'").fetchone()
        frontier = int(row[0]) if row else 0
        self._finished = {
            job_id for (job_id,) in self._db.execute("SELECT job_id FROM finished_jobs WHERE first_seq > ?", (frontier,))
        }
        return frontier

    def _read_new_images(self, ledger: IntakeLedger) -> None:
        while True:
            images = ledger.images_after(self._after_seq, _READ_BATCH)
            for image in images:
                if image.job_id in self._finished:
                    continue
                job = self._open.get(image.job_id)
                if job is None:
                    self._open[image.job_id] = _OpenJob(first_seq=image.seq, images=1, waiting=1)
                else:
                    job.images += 1
                    job.waiting += 1
            if images:
                self._after_seq = images[-1].seq
            if len(images) < _READ_BATCH:
                return

    def _update(self, job_id: str, job: _OpenJob) -> None:
        try:
            mtime_ns = os.stat(status_path(self.home, job_id)).st_mtime_ns
        except FileNotFoundError:
            return
        if mtime_ns == job.mtime_ns:
            return
        status = read_status(self.home, job_id) or {}
        job.mtime_ns = mtime_ns
        states = [image.get("state") for image in status.get("images", [])]
        if status.get("state") in _TERMINAL_JOB_STATES:
            succeeded = states.count("succeeded")
            self._db.execute(
                "INSERT OR IGNORE INTO finished_jobs VALUES (?, ?, ?, ?)",
                (job_id, job.first_seq, succeeded, len(states) - succeeded),
            )
            del self._open[job_id]
            return
        job.running = states.count("running")
        job.waiting = sum(1 for state in states if state not in TERMINAL_IMAGE_STATES and state != "running")


def _count_inbox_entries(home: OrfeasHome) -> int:
    try:
        with os.scandir(home.inbox) as entries:
            return sum(1 for entry in entries if not entry.name.startswith("."))
    except FileNotFoundError:
        return 0

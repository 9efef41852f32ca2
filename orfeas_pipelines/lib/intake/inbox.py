"""One intake tick: decide the entries waiting in `inbox/`, bounded, and move each to its place.

Entries are taken in name order; names starting with "." are an agent's work in progress
and are ignored, and so is a job folder without job.json yet (agents write it last). Each
other entry ends in exactly one place:

- accepted: the folder is renamed to `jobs/<job_id>/` (immutable from then on), its images
  are appended to the ledger and `outbox/<job_id>/status.json` says queued;
- rejected: the entry is renamed, byte for byte, into `quarantine/` with `reason.json`
  ({code, message, at}); a stray file or symlink is rejected as not_a_job;
- deferred (agent over its jobs-per-minute): it stays in `inbox/` and is judged again in
  a later tick against the time it first arrived, so waiting never makes it stale;
- held (the intake itself failed on it, e.g. a library bug): it stays in `inbox/`, its
  ledger writes are undone, and the tick goes on with the other entries.

Files in a job folder that the manifest does not list are harmless: they move with the
folder and are never read. Every decision is a line in `audit.log`.

A tick holds `state/intake.lock`, so the daemon's sensor and `orfeas process` never take
the same entry twice. Ledger writes of a tick commit together; a marker file
(`state/intake.tick`) lives for the duration of a tick, and if a tick dies after moving
folders into `jobs/` the next tick finds the marker and registers those folders, so no
accepted job is ever stranded.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Sequence

from filelock import FileLock

from orfeas_pipelines.lib.home import OrfeasHome, write_json_atomic
from orfeas_pipelines.lib.intake.audit import append_audit, audit_record, utc_timestamp
from orfeas_pipelines.lib.intake.ledger import AcceptedJob, IntakeLedger, partition_key
from orfeas_pipelines.lib.intake.manifest import IntakeError, JobManifest, parse_manifest
from orfeas_pipelines.lib.intake.registry import AgentPolicy, AgentRegistry
from orfeas_pipelines.lib.intake.verify import MANIFEST_NAME, ImageLimits, read_manifest, verify_job
from orfeas_pipelines.lib.outbox import read_status, write_queued, write_rejected

REASON_NAME = "reason.json"
LOCK_TIMEOUT_SECONDS = 120
RATE_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Rejection:
    entry: str
    code: str
    message: str
    quarantined_as: str
    job_id: str | None = None
    agent_id: str | None = None


@dataclass(frozen=True)
class Deferral:
    entry: str
    job_id: str | None
    agent_id: str | None
    reason: str


@dataclass
class IntakeOutcome:
    """What one tick decided; `remaining` counts ready entries it left for the next tick."""

    accepted: list[AcceptedJob] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    deferred: list[Deferral] = field(default_factory=list)
    remaining: int = 0


def accepted_job(manifest: JobManifest) -> AcceptedJob:
    return AcceptedJob(
        job_id=manifest.job_id,
        agent_id=manifest.agent_id,
        files=manifest.files,
        partition_keys=[partition_key(manifest.job_id, file) for file in manifest.files],
        formats=tuple(manifest.output.formats),
        resolution=manifest.params.resolution,
        seed=manifest.params.seed,
    )


def process_inbox(
    home: OrfeasHome,
    registry: AgentRegistry,
    ledger: IntakeLedger,
    now: datetime,
    max_jobs: int = 500,
    max_images: int = 2000,
    window_seconds: int = 600,
    limits: ImageLimits = ImageLimits(),
    only: Sequence[str] | None = None,
) -> IntakeOutcome:
    """Decide up to `max_jobs` entries (and about `max_images` images); the rest wait.

    `only` restricts the tick to those entry names (the HTTP API decides its own upload).

    Deferring a job of an agent already found over its rate in this tick costs only the
    manifest parse and does not count against `max_jobs`, so one flooding agent cannot
    starve the others.
    """
    home.ensure()
    with FileLock(str(home.state / "intake.lock"), timeout=LOCK_TIMEOUT_SECONDS):
        return _Tick(home, registry, ledger, now, window_seconds, limits).run(max_jobs, max_images, only)


def quarantine_entry(home: OrfeasHome, name: str, path: Path, reason: dict) -> Path:
    """Move an inbox entry into `quarantine/` untouched and put `reason.json` beside its content.

    A job folder becomes `quarantine/<name>/` itself. A stray file, a symlink, or a folder
    that already holds its own reason.json is wrapped: `quarantine/<name>/<name>`. An
    existing quarantine entry is never overwritten (the new one gets a `.N` suffix).
    """
    target = _free_name(home.quarantine, name)
    if path.is_dir() and not path.is_symlink() and not os.path.lexists(path / REASON_NAME):
        os.rename(path, target)
    else:
        target.mkdir()
        os.rename(path, target / name)
    write_json_atomic(target / REASON_NAME, reason)
    return target


class _Tick:
    def __init__(
        self,
        home: OrfeasHome,
        registry: AgentRegistry,
        ledger: IntakeLedger,
        now: datetime,
        window_seconds: float,
        limits: ImageLimits,
    ):
        self.home = home
        self.registry = registry
        self.ledger = ledger
        self.now = now
        self.now_epoch = now.timestamp()
        self.window_seconds = window_seconds
        self.limits = limits
        self.outcome = IntakeOutcome()
        self.audit: list[dict] = []
        self.over_rate: set[str] = set()
        self.accepted_in_window: dict[str, int] = {}
        self.any_deferred = False
        self.deferred_to_announce: list[AcceptedJob] = []
        self.rejections_to_announce: list[Rejection] = []
        self.recovered_without_status: list[AcceptedJob] = []

    def run(self, max_jobs: int, max_images: int, only: Sequence[str] | None = None) -> IntakeOutcome:
        marker = self.home.state / "intake.tick"
        entries = sorted(
            (
                entry
                for entry in os.scandir(self.home.inbox)
                if not entry.name.startswith(".") and (only is None or entry.name in only)
            ),
            key=lambda entry: entry.name,
        )
        jobs = images = 0
        stopped_at = len(entries)
        with self.ledger.transaction():
            if marker.exists():
                self._recover()
            self.any_deferred = self.ledger.has_deferrals()
            marker.touch()
            for index, entry in enumerate(entries):
                if jobs >= max_jobs:
                    stopped_at = index
                    break
                try:
                    with self.ledger.savepoint():
                        used = self._decide(entry, images, max_images)
                except FileNotFoundError:
                    continue
                except Exception as error:  # noqa: BLE001 - one entry's surprise must not stop the inbox
                    self._hold(entry.name, error)
                    continue
                if used is _STOP:
                    stopped_at = index
                    break
                if used is not None:
                    jobs += 1
                    images += used
            append_audit(self.home.audit_log, self.audit)
        self._announce()
        marker.unlink(missing_ok=True)
        self.outcome.remaining = sum(1 for entry in entries[stopped_at:] if _is_ready(entry))
        return self.outcome

    def _decide(self, entry: os.DirEntry, images_so_far: int, max_images: int) -> int | None | object:
        """Images this entry used; None when cheaply deferred or not ready; _STOP when over budget.

        FileNotFoundError means the entry is not ready (no job.json yet) or vanished while we
        looked at it; either way there is nothing to decide.
        """
        name, path = entry.name, Path(entry.path)
        if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
            kind = "file" if entry.is_file(follow_symlinks=False) else "special file"
            kind = "symlink" if entry.is_symlink() else kind
            self._reject(name, path, IntakeError("not_a_job", f"{kind} {name!r} in inbox/ is not a job folder"))
            return 0
        try:
            raw = read_manifest(path)
            manifest = parse_manifest(raw)
        except IntakeError as error:
            self._reject(name, path, error)
            return 0
        count = len(manifest.images)
        if images_so_far and images_so_far + count > max_images:
            return _STOP
        digest = hashlib.sha256(raw).hexdigest()
        if manifest.agent_id in self.over_rate:
            self._defer(name, manifest, digest, None)
            return None
        first_deferred = self.ledger.deferred_since(name, digest) if self.any_deferred else None
        judged_at = self.now_epoch if first_deferred is None else first_deferred
        try:
            manifest, policy = verify_job(
                path, raw, self.registry, self.ledger, self.home.jobs,
                judged_at, self.window_seconds, self.limits, manifest,
            )
        except IntakeError as error:
            if error.authentic:
                self.ledger.record_rejected(manifest.job_id, manifest.agent_id, manifest.nonce, self.now_epoch)
            self._reject(name, path, error, was_deferred=first_deferred is not None)
            return count
        job = accepted_job(manifest)
        if not self._within_rate(policy):
            self.over_rate.add(policy.agent_id)
            self._defer(name, manifest, digest, job)
            return count
        os.rename(path, self.home.jobs / job.job_id)
        self.ledger.record_accepted(job, manifest.nonce, self.now_epoch)
        if first_deferred is not None:
            self.ledger.clear_deferral(name)
        self.accepted_in_window[policy.agent_id] += 1
        self.outcome.accepted.append(job)
        self.audit.append(
            audit_record(self.now, "accepted", name, job_id=job.job_id, agent_id=job.agent_id, images=len(job.files))
        )
        return count

    def _within_rate(self, policy: AgentPolicy) -> bool:
        """Fewer than rate_per_minute jobs accepted in the last 60 s (the ledger is asked once per agent per tick)."""
        if policy.agent_id not in self.accepted_in_window:
            since = self.now_epoch - RATE_WINDOW_SECONDS
            self.accepted_in_window[policy.agent_id] = self.ledger.accepted_since(policy.agent_id, since)
        return self.accepted_in_window[policy.agent_id] < policy.rate_per_minute

    def _reject(self, name: str, path: Path, error: IntakeError, was_deferred: bool = False) -> None:
        reason = {"code": error.code, "message": error.message, "at": utc_timestamp(self.now)}
        target = quarantine_entry(self.home, name, path, reason)
        if was_deferred:
            self.ledger.clear_deferral(name)
        quarantined_as = f"quarantine/{target.name}"
        rejection = Rejection(name, error.code, error.message, quarantined_as, error.job_id, error.agent_id)
        self.outcome.rejected.append(rejection)
        self.audit.append(
            audit_record(
                self.now,
                "rejected",
                name,
                job_id=error.job_id,
                agent_id=error.agent_id,
                code=error.code,
                message=error.message,
                quarantined_as=quarantined_as,
            )
        )
        if error.job_id == name and error.agent_id and error.code != "replay":
            self.rejections_to_announce.append(rejection)

    def _defer(self, name: str, manifest: JobManifest, digest: str, verified: AcceptedJob | None) -> None:
        policy = self.registry.get(manifest.agent_id)
        rate = policy.rate_per_minute if policy else 0
        reason = f"agent {manifest.agent_id} is at its limit of {rate} jobs per minute; the job waits in inbox/"
        self.outcome.deferred.append(Deferral(name, manifest.job_id, manifest.agent_id, reason))
        _, first_time = self.ledger.deferral_started(name, digest, self.now_epoch)
        if first_time:
            self.audit.append(
                audit_record(
                    self.now, "deferred", name, job_id=manifest.job_id, agent_id=manifest.agent_id, message=reason
                )
            )
            if verified is not None:
                self.deferred_to_announce.append(verified)

    def _hold(self, name: str, error: Exception) -> None:
        """Leave an entry the intake failed to decide in inbox/, say why, and go on with the rest."""
        reason = f"intake could not decide this entry ({type(error).__name__}: {error}); it stays in inbox/"
        self.outcome.deferred.append(Deferral(name, None, None, reason))
        self.audit.append(audit_record(self.now, "deferred", name, message=" ".join(reason.split())))

    def _recover(self) -> None:
        """Register job folders a crashed tick moved into jobs/ but never committed."""
        job_ids = [entry.name for entry in os.scandir(self.home.jobs) if entry.is_dir(follow_symlinks=False)]
        unknown = set(self.ledger.unknown_job_ids(job_ids))
        for job_id in sorted(job_ids):
            if job_id not in unknown:
                known = self.ledger.accepted_job(job_id)
                if known is not None and read_status(self.home, job_id) is None:
                    self.recovered_without_status.append(known)
                continue
            manifest = parse_manifest((self.home.jobs / job_id / MANIFEST_NAME).read_bytes())
            job = accepted_job(manifest)
            self.ledger.record_accepted(job, manifest.nonce, self.now_epoch)
            self.outcome.accepted.append(job)
            self.audit.append(
                audit_record(
                    self.now,
                    "accepted",
                    job_id,
                    job_id=job_id,
                    agent_id=job.agent_id,
                    images=len(job.files),
                    message="registered after an interrupted intake tick",
                )
            )

    def _announce(self) -> None:
        """Outbox statuses, written after the ledger commit so they never claim an uncommitted job."""
        for job in self.outcome.accepted + self.recovered_without_status:
            write_queued(self.home, job)
        for job in self.deferred_to_announce:
            if read_status(self.home, job.job_id) is None:
                write_queued(self.home, job)
        for rejection in self.rejections_to_announce:
            write_rejected(self.home, rejection.job_id, rejection.agent_id, rejection.code, rejection.message)


_STOP = object()


def _is_ready(entry: os.DirEntry) -> bool:
    """A stray entry (to be quarantined) or a job folder whose job.json is written."""
    if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
        return True
    return os.path.lexists(os.path.join(entry.path, MANIFEST_NAME))


def _free_name(folder: Path, name: str) -> Path:
    candidates = itertools.chain([name], (f"{name[:200]}.{counter}" for counter in itertools.count(1)))
    return next(folder / candidate for candidate in candidates if not os.path.lexists(folder / candidate))

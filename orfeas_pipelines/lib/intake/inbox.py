"""One intake tick: decide the entries waiting in `inbox/`, bounded, and move each to its place.

Names starting with "." are an agent's work in progress and are ignored. Each other entry
ends in exactly one place:

- accepted: the folder is renamed to `jobs/<job_id>/`, `outbox/<job_id>/status.json` says
  queued, and then its images are appended to the ledger's image log with their facts
  (sha256, bytes, width, height), which is when a run may take them;
- rejected: the entry is renamed, byte for byte, into a folder of ours,
  `quarantine/<safe name>/<safe name>`, and `reason.json` ({code, message, at, entry}) is
  written beside it, never inside anything the agent dropped. The safe name is the entry's
  own when it is a plain id (and not `reason.json`); any other name a file system can hold
  gets a readable prefix and a hash of its bytes, and is recorded exactly in reason.json and
  the audit line;
- deferred (agent over its jobs-per-minute): it stays in `inbox/` and is judged again in a
  later tick against the time it first arrived, so waiting never makes it stale; the
  deferral ends when the entry leaves `inbox/` or its job.json or folder changes;
- waiting (incomplete: no or unparsable job.json, a listed image missing, while its newest
  file is younger than INCOMPLETE_GRACE_SECONDS): left alone, unaudited, for a slow writer;
  an old incomplete entry is rejected. A complete entry is never delayed;
- held (the intake itself failed on it, e.g. a library bug): it stays in `inbox/`, its
  ledger writes are undone, it is retried with backoff and audited once per reason.

Durability: every decision is journalled in the ledger together with its audit line, in the
tick's one transaction, before any file moves. Then the audit lines are appended to
`audit.log` (fsync), then the moves, reason.json and statuses are done, then the journal
rows are closed. A tick that dies or meets a full disk anywhere leaves the journal, and the
next tick finishes it first (each step is idempotent and never touches an entry that is not
the one decided, by inode), so no decision, audit line or byte is lost or doubled. A step the
system refuses for one entry (a folder intake may not move) leaves that decision journalled
and retried each tick, without stopping the others; a full disk stops the tick (one line).

Fairness: rejections cost no budget; valid work is taken round-robin across agents (each
agent's entries in name order), so a flood from one agent, or unsigned junk, never delays
another agent's job. A tick stops after `max_seconds` (reading job.json files for the fair
order may use half of it), and decoding one image is bounded (`lib/images` refuses known
slow shapes up front; `decoding` runs costly images in a worker under a CPU budget, and a
decode the busy machine could not finish in time holds its entry for a retry), so no drop
holds the intake lock for long.

A tick holds `state/intake.lock`, so the daemon's sensor and `orfeas process` never take the
same entry twice; waiting for it past `lock_timeout` is an IntakeUnavailable.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Sequence

from filelock import FileLock, Timeout

from orfeas_pipelines.lib.home import OrfeasHome, write_json_atomic
from orfeas_pipelines.lib.intake.audit import (
    append_audit,
    audit_record,
    describe_entry,
    last_audited_seq,
    utc_timestamp,
)
from orfeas_pipelines.lib.intake.decoding import DecodeWorker
from orfeas_pipelines.lib.intake.ledger import AcceptedJob, ImageFacts, IntakeLedger, PendingDecision, partition_key
from orfeas_pipelines.lib.intake.manifest import IntakeError, JobManifest, is_valid_id, parse_manifest
from orfeas_pipelines.lib.intake.registry import AgentPolicy, AgentRegistry
from orfeas_pipelines.lib.intake.verify import MANIFEST_NAME, ImageLimits, read_manifest, verify_job
from orfeas_pipelines.lib.outbox import read_status, write_queued, write_rejected

REASON_NAME = "reason.json"
LOCK_TIMEOUT_SECONDS = 45.0
"""Below Dagster's 60 s sensor timeout, so a waiting tick says why instead of being killed."""
MAX_TICK_SECONDS = 20.0
INCOMPLETE_GRACE_SECONDS = 10.0
HOLD_BACKOFF_SECONDS = (15.0, 3600.0)
"""First retry of a held entry, and the longest wait; the wait doubles in between."""
RATE_WINDOW_SECONDS = 60.0
_INCOMPLETE_CODES = ("bad_json", "image_missing")
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
"""Write failures that stop the tick (every later write would fail too); others hold one decision."""
_KEPT_MANIFEST_BYTES = 64 * 1024
_KEPT_MANIFESTS_TOTAL = 64 * 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_AGENT_FIELD = re.compile(rb'"agent_id"\s*:\s*"([A-Za-z0-9][A-Za-z0-9._-]{0,127})"')


class IntakeUnavailable(RuntimeError):
    """The tick could not run or finish (lock busy, disk full); one line. Nothing decided is lost."""


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
    max_seconds: float = MAX_TICK_SECONDS,
    lock_timeout: float | None = None,
) -> IntakeOutcome:
    """Decide up to `max_jobs` accepted jobs (and about `max_images` images); the rest wait.

    With `only`, just those inbox entry names are decided (the HTTP API stages a submission
    as an inbox entry and decides it at once, through the same checks, ledger and audit).
    Raises IntakeUnavailable, one line, when the lock stays busy or the disk is full.
    """
    home.ensure()
    lock_timeout = LOCK_TIMEOUT_SECONDS if lock_timeout is None else lock_timeout
    lock = FileLock(str(home.state / "intake.lock"), timeout=lock_timeout)
    try:
        lock.acquire()
    except Timeout:
        raise IntakeUnavailable(
            f"intake is busy: another tick has held {lock.lock_file} for over {lock_timeout:g} s; try again later"
        ) from None
    try:
        with DecodeWorker() as decoder:
            tick = _Tick(home, registry, ledger, now, window_seconds, limits, decoder, time.monotonic(), max_seconds)
            return tick.run(max_jobs, max_images, None if only is None else set(only))
    except (OSError, sqlite3.Error) as error:
        raise IntakeUnavailable(
            f"intake tick stopped: {_storage_problem(error)}; what it decided is kept and the next tick finishes it"
        ) from error
    finally:
        lock.release()


def safe_entry_name(name: str) -> str:
    """The entry's name when it is a plain id, else a readable prefix and a hash of its bytes."""
    if is_valid_id(name) and name != REASON_NAME:
        return name
    prefix = _UNSAFE.sub("_", describe_entry(name)["entry"])[:64].lstrip("._-")
    return f"{prefix or 'entry'}-{hashlib.sha256(os.fsencode(name)).hexdigest()[:12]}"


def entry_key(name: str) -> str:
    """How the ledger names an inbox entry: the name, or `hex:<bytes>` when it is not printable text."""
    described = describe_entry(name)
    return "hex:" + described["entry_hex"] if "entry_hex" in described else name


@dataclass(frozen=True)
class _Entry:
    name: str
    path: Path
    inode: int
    is_folder: bool
    agent_id: str | None = None
    raw_manifest: bytes | None = None
    """job.json as the fair-order pass read it, kept (when small) so it is read once per tick."""


class _Tick:
    def __init__(
        self,
        home: OrfeasHome,
        registry: AgentRegistry,
        ledger: IntakeLedger,
        now: datetime,
        window_seconds: float,
        limits: ImageLimits,
        decoder: DecodeWorker,
        started: float,
        max_seconds: float,
    ):
        self.home = home
        self.registry = registry
        self.ledger = ledger
        self.now = now
        self.now_epoch = now.timestamp()
        self.window_seconds = window_seconds
        self.limits = limits
        self.decoder = decoder
        self.deadline = started + max_seconds
        self.classify_until = started + max_seconds / 2  # so deciding always gets time, however full inbox/ is
        self.outcome = IntakeOutcome()
        self.over_rate: set[str] = set()
        self.accepted_in_window: dict[str, int] = {}
        self.reserved_targets: set[str] = set()
        self.holds: dict[str, tuple[str, int, float]] = {}
        self.named_entries = False
        self.any_deferred = False
        self.unfinished: set[str] = set()

    def run(self, max_jobs: int, max_images: int, only: set[str] | None) -> IntakeOutcome:
        self._settle()
        scanned = [
            entry for entry in os.scandir(self.home.inbox)
            if not entry.name.startswith(".") and entry.name not in self.unfinished
        ]
        if only is None:
            with self.ledger.transaction():
                self.ledger.forget_missing_entries({entry_key(entry.name) for entry in scanned})
        else:
            scanned = [entry for entry in scanned if entry.name in only]
            self.named_entries = True
        self.holds = self.ledger.holds()
        self.any_deferred = self.ledger.has_deferrals()
        entries = self._fair_order(self._classify(sorted(scanned, key=lambda entry: entry.name)))
        jobs = images = 0
        with self.ledger.transaction():
            for index, entry in enumerate(entries):
                if jobs >= max_jobs or time.monotonic() > self.deadline:
                    self.outcome.remaining += sum(1 for rest in entries[index:] if _is_ready(rest))
                    break
                used = self._decide_safely(entry, images, max_images)
                if used is _STOP:
                    self.outcome.remaining += sum(1 for rest in entries[index:] if _is_ready(rest))
                    break
                if used:
                    jobs += 1
                    images += used
        self._settle()
        return self.outcome

    def _classify(self, scanned: list[os.DirEntry]) -> list[_Entry]:
        """Each entry with the agent its job.json names (None for strays and unreadable ones)."""
        entries = []
        kept = 0
        for index, entry in enumerate(scanned):
            if time.monotonic() > self.classify_until:
                self.outcome.remaining += len(scanned) - index
                break
            key = entry_key(entry.name)
            if key in self.holds and self.holds[key][2] > self.now_epoch:
                continue
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
                inode = entry.inode()
            except OSError:
                continue
            path = Path(entry.path)
            if not is_folder:
                entries.append(_Entry(entry.name, path, inode, is_folder))
                continue
            raw, agent_id = _manifest_and_agent(path)
            keep = raw is not None and len(raw) <= _KEPT_MANIFEST_BYTES and kept < _KEPT_MANIFESTS_TOTAL
            kept += len(raw) if keep else 0
            entries.append(_Entry(entry.name, path, inode, is_folder, agent_id, raw if keep else None))
        return entries

    @staticmethod
    def _fair_order(entries: list[_Entry]) -> list[_Entry]:
        """Round-robin across agents (entries naming no agent form one more queue)."""
        queues: dict[str | None, list[_Entry]] = {}
        for entry in entries:
            queues.setdefault(entry.agent_id, []).append(entry)
        ordered = []
        for round_ in range(max((len(queue) for queue in queues.values()), default=0)):
            ordered += [queue[round_] for queue in queues.values() if round_ < len(queue)]
        return ordered

    def _decide_safely(self, entry: _Entry, images_so_far: int, max_images: int) -> int | None | object:
        try:
            with self.ledger.savepoint():
                used = self._decide(entry, images_so_far, max_images)
        except FileNotFoundError:
            return None
        except sqlite3.Error:
            raise  # the ledger's trouble (a full disk), not the entry's: the tick stops, nothing decided is lost
        except Exception as error:  # noqa: BLE001 - one entry's surprise (a bug, a read error) must not stop the inbox
            self._hold(entry, error)
            return None
        if used is not _STOP:
            self._clear_hold(entry)
        return used

    def _decide(self, entry: _Entry, images_so_far: int, max_images: int) -> int | None | object:
        """Images this entry took from the budget (0 when rejected); None when it waits; _STOP when over budget.

        FileNotFoundError means the entry vanished while we looked at it: nothing to decide.
        """
        if not entry.is_folder:
            kind = "symlink" if entry.path.is_symlink() else "file" if entry.path.is_file() else "special file"
            shown = describe_entry(entry.name)["entry"]
            self._reject(entry, IntakeError("not_a_job", f"{kind} {shown!r} in inbox/ is not a job folder"))
            return 0
        try:
            raw = entry.raw_manifest if entry.raw_manifest is not None else read_manifest(entry.path)
            manifest = parse_manifest(raw)
        except FileNotFoundError:
            if self._may_still_be_written(entry):
                return None
            message = (
                f"folder has had no {MANIFEST_NAME} for {INCOMPLETE_GRACE_SECONDS:g} s "
                "(stage a job as inbox/.<job_id>.tmp/ and rename it when job.json is written)"
            )
            self._reject(entry, IntakeError("not_a_job", message))
            return 0
        except IntakeError as error:
            if error.code in _INCOMPLETE_CODES and self._may_still_be_written(entry):
                return None
            self._reject(entry, error)
            return 0
        count = len(manifest.images)
        if images_so_far and images_so_far + count > max_images:
            return _STOP
        fingerprint = f"{hashlib.sha256(raw).hexdigest()}:{entry.inode}"
        key = entry_key(entry.name)
        if manifest.agent_id in self.over_rate:
            self._defer(entry, manifest, fingerprint, None)
            return None
        first_deferred = self.ledger.deferred_since(key, fingerprint) if self.any_deferred else None
        judged_at = self.now_epoch if first_deferred is None else first_deferred
        try:
            verified = verify_job(
                entry.path, raw, self.registry, self.ledger, self.home.jobs,
                judged_at, self.window_seconds, self.limits, manifest, self.decoder,
            )
        except IntakeError as error:
            if error.code in _INCOMPLETE_CODES and self._may_still_be_written(entry):
                return None
            if error.authentic:
                self.ledger.record_rejected(manifest.job_id, manifest.agent_id, manifest.nonce, self.now_epoch)
            self._reject(entry, error)
            return 0
        job = accepted_job(verified.manifest)
        if not self._within_rate(verified.policy):
            self.over_rate.add(verified.policy.agent_id)
            self._defer(entry, manifest, fingerprint, job)
            return None
        if first_deferred is not None:
            self.ledger.clear_deferral(key)
        self._accept(entry, job, verified.manifest.nonce, verified.images)
        return count

    def _may_still_be_written(self, entry: _Entry) -> bool:
        """An incomplete entry waits while young, unless the caller named it (`only`: staged complete)."""
        return not self.named_entries and _is_young(entry.path)

    def _within_rate(self, policy: AgentPolicy) -> bool:
        """Fewer than rate_per_minute jobs accepted in the last 60 s (the ledger is asked once per agent per tick)."""
        if policy.agent_id not in self.accepted_in_window:
            since = self.now_epoch - RATE_WINDOW_SECONDS
            self.accepted_in_window[policy.agent_id] = self.ledger.accepted_since(policy.agent_id, since)
        return self.accepted_in_window[policy.agent_id] < policy.rate_per_minute

    def _accept(self, entry: _Entry, job: AcceptedJob, nonce: str, images: tuple[ImageFacts, ...]) -> None:
        self.ledger.record_accepted(job, nonce, self.now_epoch)
        self.accepted_in_window[job.agent_id] += 1
        self.outcome.accepted.append(job)
        action = {
            **_where(entry),
            "kind": "accept",
            "job": vars(job),
            "images": [vars(image) for image in images],
        }
        record = self._record("accepted", entry, job_id=job.job_id, agent_id=job.agent_id, images=len(job.files))
        self.ledger.add_pending(action, record)

    def _reject(self, entry: _Entry, error: IntakeError) -> None:
        names = describe_entry(entry.name)
        safe = safe_entry_name(entry.name)
        target = self._free_target(safe)
        reason = {"code": error.code, "message": error.message, "at": utc_timestamp(self.now), **names}
        announce = error.signed and error.job_id == entry.name and error.agent_id and error.code != "replay"
        status = {"job_id": error.job_id, "agent_id": error.agent_id, "code": error.code, "message": error.message}
        action = {
            **_where(entry),
            "kind": "reject",
            "target": target,
            "inner": safe,
            "reason": reason,
            "status": status if announce else None,
        }
        quarantined_as = f"quarantine/{target}"
        self.ledger.clear_deferral(entry_key(entry.name))
        self.outcome.rejected.append(
            Rejection(entry.name, error.code, error.message, quarantined_as, error.job_id, error.agent_id)
        )
        record = self._record(
            "rejected", entry, job_id=error.job_id, agent_id=error.agent_id, code=error.code,
            message=error.message, quarantined_as=quarantined_as,
        )
        self.ledger.add_pending(action, record)

    def _defer(self, entry: _Entry, manifest: JobManifest, fingerprint: str, verified: AcceptedJob | None) -> None:
        policy = self.registry.get(manifest.agent_id)
        rate = policy.rate_per_minute if policy else 0
        reason = f"agent {manifest.agent_id} is at its limit of {rate} jobs per minute; the job waits in inbox/"
        self.outcome.deferred.append(Deferral(entry.name, manifest.job_id, manifest.agent_id, reason))
        _, first_time = self.ledger.deferral_started(entry_key(entry.name), fingerprint, self.now_epoch)
        if first_time:
            record = self._record("deferred", entry, job_id=manifest.job_id, agent_id=manifest.agent_id, message=reason)
            job = None if verified is None else vars(verified)
            self.ledger.add_pending({"kind": "defer", "job": job}, record)

    def _hold(self, entry: _Entry, error: Exception) -> None:
        """Leave an entry the intake failed to decide in inbox/; retry with backoff, audit once per reason."""
        detail = " ".join(f"{type(error).__name__}: {error}".split())
        reason = f"intake could not decide this entry ({detail}); it stays in inbox/"
        self.outcome.deferred.append(Deferral(entry.name, None, None, reason))
        key = entry_key(entry.name)
        previous = self.holds.get(key)
        attempts = 1 if previous is None or previous[0] != reason else previous[1] + 1
        first, longest = HOLD_BACKOFF_SECONDS
        self.ledger.hold(key, reason, attempts, self.now_epoch + min(longest, first * 2 ** (attempts - 1)))
        if attempts == 1:
            record = self._record("deferred", entry, message=reason)
            self.ledger.add_pending({"kind": "defer", "job": None}, record)

    def _record(self, decision: str, entry: _Entry, **fields) -> dict:
        """The audit line of a decision about `entry`, its name recorded exactly."""
        names = describe_entry(entry.name)
        return audit_record(self.now, decision, names["entry"], entry_hex=names.get("entry_hex"), **fields)

    def _clear_hold(self, entry: _Entry) -> None:
        key = entry_key(entry.name)
        if key in self.holds:
            self.ledger.clear_hold(key)

    def _free_target(self, safe: str) -> str:
        """A quarantine folder name not on disk nor taken earlier in this tick (never overwrite)."""
        for counter in range(1_000_000):
            candidate = safe if counter == 0 else f"{safe[:200]}.{counter}"
            if candidate not in self.reserved_targets and not os.path.lexists(self.home.quarantine / candidate):
                self.reserved_targets.add(candidate)
                return candidate
        raise RuntimeError(f"no free quarantine name for {safe}")

    def _settle(self) -> None:
        """Finish journalled decisions: audit lines first, then moves and files, then close them."""
        pending = self.ledger.pending()
        if not pending:
            return
        unaudited = [decision for decision in pending if not decision.audited]
        if unaudited:
            written = last_audited_seq(self.home.audit_log)
            append_audit(self.home.audit_log, [decision.audit for decision in unaudited if decision.seq > written])
            with self.ledger.transaction():
                self.ledger.mark_audited(unaudited[-1].seq)
        done = []
        self.unfinished.clear()
        try:
            for decision in pending:
                try:
                    self._apply(decision.action)
                except Exception as error:  # noqa: BLE001 - one refused move must not stop the others
                    if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
                        raise
                    self._note_unfinished(decision, error)
                    continue
                done.append(decision)
        finally:
            with self.ledger.transaction():
                for decision in done:
                    if decision.action["kind"] == "accept":
                        facts = [ImageFacts(**image) for image in decision.action["images"]]
                        self.ledger.log_images(_job_from(decision.action["job"]), facts)
                self.ledger.finish_pending([decision.seq for decision in done])

    def _note_unfinished(self, decision: PendingDecision, error: Exception) -> None:
        """A decision whose move or file write the system refused (e.g. a folder we may not move):
        it stays journalled, its entry stays in inbox/ undecided again, and every tick retries it."""
        entry_hex = decision.action.get("entry_hex")
        name = os.fsdecode(bytes.fromhex(entry_hex)) if entry_hex else f"journal #{decision.seq}"
        self.unfinished.add(name)
        reason = (
            f"{decision.audit['decision']} (audit seq {decision.seq}) but not carried out: "
            f"{getattr(error, 'strerror', None) or error}; retried every tick"
        )
        self.outcome.deferred.append(Deferral(name, None, None, reason))

    def _apply(self, action: dict) -> None:
        """Carry out one decision's file effects; safe to repeat after a crash at any step."""
        kind = action["kind"]
        if kind == "accept":
            job = _job_from(action["job"])
            _move_if_same(self._inbox_path(action), action["inode"], self.home.jobs / job.job_id)
            write_queued(self.home, job)
        elif kind == "reject":
            target = self.home.quarantine / action["target"]
            target.mkdir(exist_ok=True)
            _move_if_same(self._inbox_path(action), action["inode"], target / action["inner"])
            write_json_atomic(target / REASON_NAME, action["reason"])
            status = action["status"]
            if status is not None:
                write_rejected(self.home, status["job_id"], status["agent_id"], status["code"], status["message"])
        elif action["job"] is not None and read_status(self.home, action["job"]["job_id"]) is None:
            write_queued(self.home, _job_from(action["job"]))

    def _inbox_path(self, action: dict) -> bytes:
        return os.path.join(os.fsencode(self.home.inbox), bytes.fromhex(action["entry_hex"]))


_STOP = object()


def _where(entry: _Entry) -> dict:
    """The exact entry a decision is about: its name's bytes and its inode."""
    return {"entry_hex": os.fsencode(entry.name).hex(), "inode": entry.inode}


def _job_from(fields: dict) -> AcceptedJob:
    return AcceptedJob(**{**fields, "formats": tuple(fields["formats"])})


def _move(source: bytes, target: Path) -> None:
    """Rename within the home (one file system), so the move is atomic."""
    os.rename(source, target)


def _move_if_same(source: bytes, inode: int, target: Path) -> None:
    """Move the decided entry unless it is gone, or already moved, or replaced by a newer drop."""
    try:
        if os.lstat(source).st_ino != inode:
            return
    except FileNotFoundError:
        return
    if not os.path.lexists(target):
        _move(source, target)


def _manifest_and_agent(folder: Path) -> tuple[bytes | None, str | None]:
    """A job folder's job.json and the agent it names, for the fair order (None where unreadable).

    The agent is only a hint for ordering, read without parsing: naming an agent here gains a
    drop nothing but a place in that agent's queue, and it is judged in full later.
    """
    try:
        raw = read_manifest(folder)
    except Exception:  # noqa: BLE001 - an unreadable job.json is judged (and rejected) later
        return None, None
    named = _AGENT_FIELD.search(raw)
    return raw, named.group(1).decode() if named else None


def _is_young(folder: Path) -> bool:
    """Whether the folder or a file in it changed within the grace period (file-system clock)."""
    newest = 0.0
    try:
        newest = os.lstat(folder).st_mtime
        for child in os.scandir(folder):
            newest = max(newest, child.stat(follow_symlinks=False).st_mtime)
    except OSError:
        pass
    return time.time() - newest < INCOMPLETE_GRACE_SECONDS


def _is_ready(entry: _Entry) -> bool:
    """A stray entry (to be quarantined) or a job folder whose job.json is written."""
    return not entry.is_folder or os.path.lexists(entry.path / MANIFEST_NAME)


def _storage_problem(error: BaseException) -> str:
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}"
    return f"intake ledger: {error}"

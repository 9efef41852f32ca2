"""Durable intake state (`state/intake.sqlite`): what was seen, what was accepted, and the image log.

- Seen nonces (per agent) and job ids (global, since the job id names `jobs/<job_id>/` and
  the partitions) are kept forever, so a replay is refused even after a restart.
- Accepted jobs with their time, for the per-agent jobs-per-minute limit, and their
  parameters, so the runs can find them from the partition key alone.
- An append-only image log with an increasing `seq`: the sensor's cursor is the last seq it
  registered, so the cursor stays one integer however many jobs arrive.
- Deferred entries with the time they were first seen, so a job held back by the rate limit
  is judged against the time it arrived and never goes stale while it waits. A deferral is
  keyed by the entry's name, its job.json digest and its folder's inode, and is pruned when
  the entry leaves inbox/, so it never outlives its entry.
- Held entries (the intake failed on them): retried with backoff, audited once per reason.
- A journal of decided but not yet applied intake decisions (`pending`): each decision and
  its audit line commit together, before any file moves, and a later tick finishes what a
  crashed or disk-full tick left (moves, reason.json, status, image log).
- The archive of retired image partitions (`retired`): what each image of a long-settled job
  ended as, written before its partition leaves Dagster (lib/retire.py).

Where it lives: `open_ledger(home)` is the one way to open it. By default it is SQLite at
`state/intake.sqlite`, for one machine. When the API server and the sensor run on different
machines they must share one transactional store (SQLite's locks over NFS are unreliable), so
`ORFEAS_LEDGER_URL=postgresql://...` puts it in Postgres (schema `orfeas_intake`, beside
Dagster's tables). Both speak the same SQL through a small adapter; a write transaction holds
the whole database on both (SQLite's `BEGIN IMMEDIATE`, a Postgres advisory lock), so intake
decisions, the nonces shared between channels and the image log's order are the same on both.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from orfeas_pipelines.lib.home import OrfeasHome

SETUP_ATTEMPTS = 100
LEDGER_URL_ENV = "ORFEAS_LEDGER_URL"
POSTGRES_SCHEMA = "orfeas_intake"
POSTGRES_URL_PREFIXES = ("postgresql://", "postgres://", "postgresql+psycopg2://")
_WRITE_LOCK = 0x0F7EA5_01
"""Advisory lock key a Postgres write transaction holds, like SQLite's database write lock."""
_SCHEMA_LOCK = 0x0F7EA5_02

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonces (
    agent_id TEXT NOT NULL, nonce TEXT NOT NULL, seen_at REAL NOT NULL,
    PRIMARY KEY (agent_id, nonce)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, decided_at REAL NOT NULL,
    accepted INTEGER NOT NULL, formats TEXT, resolution INTEGER, seed INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_by_agent_time ON jobs (agent_id, accepted, decided_at);
CREATE TABLE IF NOT EXISTS images (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, partition_key TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL, agent_id TEXT NOT NULL, file TEXT NOT NULL,
    sha256 TEXT, bytes INTEGER, width INTEGER, height INTEGER
);
CREATE INDEX IF NOT EXISTS images_by_job ON images (job_id, seq);
CREATE TABLE IF NOT EXISTS deferred (
    entry TEXT PRIMARY KEY, manifest_sha256 TEXT NOT NULL, first_seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held (
    entry TEXT PRIMARY KEY, reason TEXT NOT NULL, attempts INTEGER NOT NULL, retry_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL, audit TEXT NOT NULL,
    audited INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS retired (
    partition_key TEXT PRIMARY KEY, job_id TEXT NOT NULL, state TEXT NOT NULL, outputs TEXT NOT NULL,
    settled_at TEXT NOT NULL, retired_at REAL NOT NULL
) WITHOUT ROWID;
"""
_NEWEST_TABLE = "retired"
"""A Postgres ledger that has this table has the whole schema."""
_IMAGE_FACTS = (("sha256", "TEXT"), ("bytes", "INTEGER"), ("width", "INTEGER"), ("height", "INTEGER"))


def partition_key(job_id: str, file: str) -> str:
    return f"{job_id}/{file}"


@dataclass(frozen=True)
class ImageFacts:
    """What intake verified about one accepted image; the run checks the bytes against `sha256`."""

    file: str
    sha256: str
    bytes: int
    width: int
    height: int


@dataclass(frozen=True)
class LedgerImage:
    """One accepted image; the facts are None only for images logged before they were stored."""

    seq: int
    partition_key: str
    job_id: str
    file: str
    sha256: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class RetiredImage:
    """The archive record of an image whose partition left Dagster: its state and outputs as
    its job's status.json had them when the job settled (`settled_at`, the status's time)."""

    partition_key: str
    job_id: str
    state: str
    outputs: dict
    settled_at: str


@dataclass(frozen=True)
class PendingDecision:
    """A committed decision whose effects (moves, files, image log) may not all be done yet."""

    seq: int
    action: dict
    audit: dict
    audited: bool


@dataclass(frozen=True)
class AcceptedJob:
    """An accepted job as the runs need it: its images (partition keys) and parameters."""

    job_id: str
    agent_id: str
    files: list[str]
    partition_keys: list[str]
    formats: tuple[str, ...]
    resolution: int
    seed: int


class LedgerDatabaseError(sqlite3.DatabaseError):
    """The Postgres ledger's database failed. A subclass of `sqlite3.Error`, so the intake's
    handling of "the ledger's trouble, not the entry's" is the same on both backends."""


def ledger_location(home: OrfeasHome) -> str | Path:
    """`$ORFEAS_LEDGER_URL` (a postgresql:// URL) when set, else the home's SQLite file."""
    url = os.environ.get(LEDGER_URL_ENV)
    if not url:
        return home.state / "intake.sqlite"
    if not url.startswith(POSTGRES_URL_PREFIXES):
        raise ValueError(f"{LEDGER_URL_ENV}: expected a postgresql:// URL, got {url.split('@')[-1]!r}")
    return url


def open_ledger(home: OrfeasHome) -> "IntakeLedger":
    """The home's intake ledger, on the configured backend: every user opens it through here."""
    return IntakeLedger(ledger_location(home))


def ledger_exists(home: OrfeasHome) -> bool:
    """False only for a SQLite ledger not created yet (a reader then has nothing to read)."""
    location = ledger_location(home)
    return _is_postgres(location) or Path(location).exists()


def _is_postgres(location: Path | str) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRES_URL_PREFIXES)


class IntakeLedger:
    """One connection to the intake database; use `transaction()` to group a tick's writes.

    `location` is a SQLite file or a `postgresql://` URL (see `open_ledger`).
    """

    def __init__(self, location: Path | str):
        self.location = location
        self._db = _PostgresDatabase(location) if _is_postgres(location) else _SqliteDatabase(Path(location))
        self._in_transaction = False

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "IntakeLedger":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"IntakeLedger({self._db.name!r})"

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together (or not at all); one writer at a time, across processes."""
        self._db.begin()
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._in_transaction = False
            self._db.execute("ROLLBACK")
            raise
        self._in_transaction = False
        self._db.execute("COMMIT")

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Inside a transaction: the writes of this block are undone if it raises."""
        self._db.execute("SAVEPOINT entry")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO SAVEPOINT entry")
            raise
        finally:
            self._db.execute("RELEASE SAVEPOINT entry")

    def nonce_seen(self, agent_id: str, nonce: str) -> bool:
        row = self._db.execute("SELECT 1 FROM nonces WHERE agent_id = ? AND nonce = ?", (agent_id, nonce)).fetchone()
        return row is not None

    def spend_nonces(self, rows: Sequence[tuple[str, str, float]]) -> None:
        """Burn (agent_id, nonce, at) rows, e.g. the HTTP API's request nonces."""
        self._db.executemany(f"{_INSERT_NONCE} ON CONFLICT DO NOTHING", rows)

    def job_seen(self, job_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone() is not None

    def accepted_since(self, agent_id: str, since: float) -> int:
        """How many of the agent's jobs were accepted at or after `since` (epoch seconds)."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE agent_id = ? AND accepted = 1 AND decided_at >= ?", (agent_id, since)
        ).fetchone()
        return int(row[0])

    def oldest_accepted_since(self, agent_id: str, since: float) -> float | None:
        """When the oldest of the agent's jobs accepted at or after `since` was accepted."""
        row = self._db.execute(
            "SELECT MIN(decided_at) FROM jobs WHERE agent_id = ? AND accepted = 1 AND decided_at >= ?", (agent_id, since)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def agent_job_ids(self, agent_id: str, after_job_id: str | None, limit: int) -> list[str]:
        """The agent's decided job ids, newest first, starting after `after_job_id` (a page)."""
        rows = self._db.execute(
            "SELECT job_id FROM jobs WHERE agent_id = ? AND (? IS NULL OR (decided_at, job_id) < "
            "(SELECT decided_at, job_id FROM jobs WHERE job_id = ?)) ORDER BY decided_at DESC, job_id DESC LIMIT ?",
            (agent_id, after_job_id, after_job_id, limit),
        )
        return [row[0] for row in rows]

    def record_rejected(self, job_id: str, agent_id: str, nonce: str, at: float) -> None:
        """Burn the nonce and job id of an authentic job that was rejected after the replay check."""
        self._db.execute(f"{_INSERT_NONCE} ON CONFLICT DO NOTHING", (agent_id, nonce, at))
        self._db.execute(
            "INSERT INTO jobs (job_id, agent_id, decided_at, accepted) VALUES (?, ?, ?, 0) ON CONFLICT DO NOTHING",
            (job_id, agent_id, at),
        )

    def record_accepted(self, job: AcceptedJob, nonce: str, at: float) -> None:
        """Burn the nonce and job id and store the job's parameters (its images are logged by `log_images`)."""
        self._db.execute(f"{_INSERT_NONCE} ON CONFLICT DO NOTHING", (job.agent_id, nonce, at))
        self._db.execute(
            "INSERT INTO jobs VALUES (?, ?, ?, 1, ?, ?, ?)",
            (job.job_id, job.agent_id, at, ",".join(job.formats), job.resolution, job.seed),
        )

    def log_images(self, job: AcceptedJob, facts: Sequence[ImageFacts]) -> None:
        """Append an accepted job's images to the image log, once its folder is in jobs/ (idempotent).

        Always inside a write transaction: one writer at a time makes the seq order the commit
        order, so a reader paging by seq never passes a row that commits later.
        """
        by_file = {fact.file: fact for fact in facts}
        rows = []
        for key, file in zip(job.partition_keys, job.files):
            fact = by_file.get(file)
            rows.append(
                (key, job.job_id, job.agent_id, file)
                + ((fact.sha256, fact.bytes, fact.width, fact.height) if fact else (None, None, None, None))
            )
        with nullcontext() if self._in_transaction else self.transaction():
            self._db.executemany(
                "INSERT INTO images (partition_key, job_id, agent_id, file, sha256, bytes, width, height) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                rows,
            )

    def image(self, key: str) -> LedgerImage | None:
        """The logged image with this partition key, or None."""
        found = self._images("WHERE partition_key = ?", (key,))
        return found[0] if found else None

    def images_after(self, seq: int, limit: int) -> list[LedgerImage]:
        """Up to `limit` accepted images with a seq above `seq`, oldest first."""
        return self._images("WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))

    def last_seq(self) -> int:
        row = self._db.execute("SELECT MAX(seq) FROM images").fetchone()
        return int(row[0] or 0)

    def accepted_job(self, job_id: str) -> AcceptedJob | None:
        """The stored parameters and images of an accepted job, or None."""
        row = self._db.execute(
            "SELECT agent_id, formats, resolution, seed FROM jobs WHERE job_id = ? AND accepted = 1", (job_id,)
        ).fetchone()
        if row is None:
            return None
        images = self._images("WHERE job_id = ? ORDER BY seq", (job_id,))
        return AcceptedJob(
            job_id=job_id,
            agent_id=row[0],
            files=[image.file for image in images],
            partition_keys=[image.partition_key for image in images],
            formats=tuple(row[1].split(",")),
            resolution=int(row[2]),
            seed=int(row[3]),
        )

    def deferral_started(self, entry: str, manifest_sha256: str, at: float) -> tuple[float, bool]:
        """When this exact job.json was first deferred, and whether that is now (a first deferral).

        A changed job.json under the same entry name starts a new deferral.
        """
        row = self._db.execute(
            "SELECT manifest_sha256, first_seen_at FROM deferred WHERE entry = ?", (entry,)
        ).fetchone()
        if row is not None and row[0] == manifest_sha256:
            return float(row[1]), False
        self._db.execute(
            "INSERT INTO deferred VALUES (?, ?, ?) ON CONFLICT (entry) DO UPDATE SET "
            "manifest_sha256 = excluded.manifest_sha256, first_seen_at = excluded.first_seen_at",
            (entry, manifest_sha256, at),
        )
        return at, True

    def has_deferrals(self) -> bool:
        return self._db.execute("SELECT 1 FROM deferred LIMIT 1").fetchone() is not None

    def deferred_since(self, entry: str, manifest_sha256: str) -> float | None:
        """The first-deferral time of this exact job.json, or None if it was never deferred."""
        row = self._db.execute(
            "SELECT first_seen_at FROM deferred WHERE entry = ? AND manifest_sha256 = ?", (entry, manifest_sha256)
        ).fetchone()
        return None if row is None else float(row[0])

    def clear_deferral(self, entry: str) -> None:
        self._db.execute("DELETE FROM deferred WHERE entry = ?", (entry,))

    def holds(self) -> dict[str, tuple[str, int, float]]:
        """Every held entry → (reason, attempts, retry_at)."""
        rows = self._db.execute("SELECT entry, reason, attempts, retry_at FROM held")
        return {row[0]: (row[1], int(row[2]), float(row[3])) for row in rows}

    def hold(self, entry: str, reason: str, attempts: int, retry_at: float) -> None:
        self._db.execute(
            "INSERT INTO held VALUES (?, ?, ?, ?) ON CONFLICT (entry) DO UPDATE SET "
            "reason = excluded.reason, attempts = excluded.attempts, retry_at = excluded.retry_at",
            (entry, reason, attempts, retry_at),
        )

    def clear_hold(self, entry: str) -> None:
        self._db.execute("DELETE FROM held WHERE entry = ?", (entry,))

    def forget_missing_entries(self, present: set[str]) -> None:
        """Drop deferrals and holds of entries no longer in inbox/: they must not outlive their entry."""
        for table in ("deferred", "held"):
            gone = [(row[0],) for row in self._db.execute(f"SELECT entry FROM {table}").fetchall() if row[0] not in present]
            self._db.executemany(f"DELETE FROM {table} WHERE entry = ?", gone)

    def add_pending(self, action: dict, audit: dict) -> int:
        """Journal a decision with its audit line; the line is written with the returned seq."""
        rows = self._db.execute(
            "INSERT INTO pending (action, audit) VALUES (?, ?) RETURNING seq", (json.dumps(action), json.dumps(audit))
        ).fetchall()
        return int(rows[0][0])

    def pending(self) -> list[PendingDecision]:
        """Journalled decisions, oldest first; each audit line carries its `seq`."""
        rows = self._db.execute("SELECT seq, action, audit, audited FROM pending ORDER BY seq")
        return [
            PendingDecision(seq, json.loads(action), {**json.loads(audit), "seq": seq}, bool(audited))
            for seq, action, audit, audited in rows
        ]

    def mark_audited(self, up_to_seq: int) -> None:
        self._db.execute("UPDATE pending SET audited = 1 WHERE seq <= ?", (up_to_seq,))

    def finish_pending(self, seqs: Sequence[int]) -> None:
        self._db.executemany("DELETE FROM pending WHERE seq = ?", [(seq,) for seq in seqs])

    def archive_retired(self, images: Sequence[RetiredImage], at: float) -> None:
        """Record images whose partitions are about to be retired (idempotent: the first record stays)."""
        self._db.executemany(
            "INSERT INTO retired VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [(i.partition_key, i.job_id, i.state, json.dumps(i.outputs), i.settled_at, at) for i in images],
        )

    def retired_image(self, key: str) -> RetiredImage | None:
        """The archive record of a retired partition, or None if it was never retired."""
        row = self._db.execute(
            "SELECT partition_key, job_id, state, outputs, settled_at FROM retired WHERE partition_key = ?", (key,)
        ).fetchone()
        return None if row is None else RetiredImage(row[0], row[1], row[2], json.loads(row[3]), row[4])

    def _images(self, where: str, params: tuple) -> list[LedgerImage]:
        query = f"SELECT seq, partition_key, job_id, file, sha256, bytes, width, height FROM images {where}"
        return [LedgerImage(*row) for row in self._db.execute(query, params)]


_INSERT_NONCE = "INSERT INTO nonces VALUES (?, ?, ?)"


class _SqliteDatabase:
    """The ledger in one SQLite file: WAL, so readers never wait for the writer."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.name = str(path)
        self._db = sqlite3.connect(self.name, timeout=30.0, isolation_level=None)
        self._set_up()

    def _set_up(self) -> None:
        """WAL, schema and migrations. Two processes opening a new database at once race for
        the switch to WAL, which SQLite refuses at once instead of waiting: retry briefly."""
        for attempt in range(SETUP_ATTEMPTS):
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                self._add_missing_image_columns()
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == SETUP_ATTEMPTS - 1:
                    raise
                time.sleep(0.05)

    def _add_missing_image_columns(self) -> None:
        """Databases from before intake stored image facts gain the columns (NULL for old rows)."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(images)")}
        for name, kind in _IMAGE_FACTS:
            if name not in present:
                self._db.execute(f"ALTER TABLE images ADD COLUMN {name} {kind}")

    def begin(self) -> None:
        """Take the database's write lock now, so the transaction's reads see what it will write over."""
        self._db.execute("BEGIN IMMEDIATE")

    def execute(self, sql: str, params: Sequence = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        self._db.executemany(sql, rows)

    def close(self) -> None:
        self._db.close()


class _PostgresDatabase:
    """The ledger in Postgres, schema `orfeas_intake`, in autocommit mode outside `begin()`.

    `begin()` takes one transaction-scoped advisory lock, the counterpart of SQLite's
    `BEGIN IMMEDIATE`: writers queue, readers (MVCC) never wait. Statements run READ
    COMMITTED, so once the lock is held they see everything the previous writer committed.
    A connection lost outside a transaction (a Postgres restart) is reopened once.
    """

    def __init__(self, url: str):
        import psycopg2

        self._psycopg2 = psycopg2
        self._url = url.replace("postgresql+psycopg2://", "postgresql://", 1)
        self.name = self._url.split("@")[-1]
        self._in_transaction = False
        self._connect()
        self._set_up()

    def _connect(self) -> None:
        try:
            self._db = self._psycopg2.connect(self._url, connect_timeout=10, application_name="orfeas-intake-ledger")
        except self._psycopg2.Error as error:
            raise LedgerDatabaseError(f"intake ledger at {self.name}: {str(error).strip()}") from error
        self._db.autocommit = True
        with self._db.cursor() as cursor:
            cursor.execute(f"SET search_path TO {POSTGRES_SCHEMA}")

    def _set_up(self) -> None:
        """Create the schema once; concurrent first openers wait for each other (a lock of its own)."""
        if self.execute(f"SELECT to_regclass('{POSTGRES_SCHEMA}.{_NEWEST_TABLE}')").fetchone()[0] is not None:
            return
        self.execute("BEGIN")
        self.execute("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
        self.execute(f"CREATE SCHEMA IF NOT EXISTS {POSTGRES_SCHEMA}")
        for statement in _postgres_schema():
            self.execute(statement)
        self.execute("COMMIT")

    def begin(self) -> None:
        self.execute("BEGIN")
        self._in_transaction = True
        self.execute("SELECT pg_advisory_xact_lock(?)", (_WRITE_LOCK,))

    def execute(self, sql: str, params: Sequence = ()):
        if sql in ("COMMIT", "ROLLBACK"):
            self._in_transaction = False
        return self._run(lambda cursor: cursor.execute(sql.replace("?", "%s"), params))

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        from psycopg2.extras import execute_batch

        self._run(lambda cursor: execute_batch(cursor, sql.replace("?", "%s"), rows))

    def _run(self, statement):
        """Run `statement(cursor)`, reconnecting once if the connection is gone outside a
        transaction; a database error is a LedgerDatabaseError."""
        try:
            if self._db.closed and not self._in_transaction:
                self._connect()
            cursor = self._db.cursor()
            try:
                statement(cursor)
            except self._psycopg2.OperationalError:
                if not self._db.closed or self._in_transaction:
                    raise
                self._connect()
                cursor = self._db.cursor()
                statement(cursor)
            return cursor
        except self._psycopg2.Error as error:
            raise LedgerDatabaseError(f"intake ledger: {str(error).strip()}") from error

    def close(self) -> None:
        self._db.close()


def _postgres_schema() -> list[str]:
    """The SQLite schema in Postgres' types: 64-bit integers, double-precision times, serial seqs."""
    schema = _SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY").replace(" WITHOUT ROWID", "")
    schema = schema.replace("INTEGER", "BIGINT").replace("REAL", "DOUBLE PRECISION")
    return [statement.strip() for statement in schema.split(";") if statement.strip()]

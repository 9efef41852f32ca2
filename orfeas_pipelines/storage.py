"""Dagster's SQLite event log, with its database connections kept open between events.

`SqliteEventLogStorage` builds a new SQLAlchemy engine, opens a new SQLite connection and
recompiles every statement for each group of statements it runs: about 5 ms of an event's
7.5 ms here, paid two to four times per image in a range run (its materialization, its check
evaluations) and once per image at intake (`source_image`). This subclass keeps one engine
for the index shard and for the last few run shards, so the same events cost about 2 ms.

Two more of Dagster's per-event costs are paid once here: its check that a table exists
(`has_table`, a new SQLite connection each time, asked for every check evaluation, every
asset event with tags and every read of the dynamic partitions) and its look-up of the
asset-key table's columns (asked for every asset event). Tables and columns are added by
migrations, never removed while an instance runs, so a positive answer is kept. And
`batched()` stores many asset events in one transaction per database, which is how
`orfeas process` records a tick's source images.

It is a drop-in: the same files (`history/runs/<run_id>.db` and `index.db`), schema and
locking, so processes using it and processes using Dagster's own class (an older home's
webserver, a tool) share one event log. Its connections commit with `synchronous=NORMAL`, the
setting SQLite recommends for WAL databases: a commit no longer waits for the disk to confirm
(about 0.7 ms of an event's 2 ms here), a killed process loses nothing, and a power cut or
kernel crash may undo the last few events but never corrupts the log. An event lost that way
is an image whose delivery is not recorded, so it is delivered again; nothing is lost. Postgres
(`deploy/dagster.yaml`) replaces all of this in a deployment.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from typing import Iterator, Sequence

from dagster._core.events import DagsterEventType
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SQLITE_BUSY_TIMEOUT_SECONDS,
    SqliteEventLogStorage,
)
from dagster._core.storage.sqlalchemy_compat import db_result
from dagster_shared.serdes import serialize_value
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

BATCHED_EVENTS = (DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_OBSERVATION)
OPEN_RUN_SHARDS = 8
"""Run shards whose engine stays open; a run writes to one, the webserver reads a few."""

_ALL_STORAGES: "weakref.WeakSet[PooledSqliteEventLogStorage]" = weakref.WeakSet()


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """SQLite event storage that reuses one engine (and its connection) per shard."""

    def __init__(self, base_dir: str, inst_data=None):
        if not os.path.isabs(base_dir):
            raise ValueError(
                f"event log base_dir {base_dir!r} must be an absolute path (`orfeas init` writes the home's dagster.yaml)"
            )
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._tables_present: set[str] = set()
        self._asset_key_index_cols = False
        self._batch = threading.local()
        super().__init__(base_dir, inst_data=inst_data)
        _ALL_STORAGES.add(self)

    @classmethod
    def from_config_value(cls, inst_data, config_value) -> "PooledSqliteEventLogStorage":
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        # As in the parent: one statement group at a time per storage (`_db_lock`), each in
        # its own transaction, committed when the block ends.
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def _engine(self, shard: str) -> Engine:
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = create_engine(
            self.conn_string_for_shard(shard),
            poolclass=QueuePool,
            pool_size=1,
            max_overflow=4,  # creating a shard's tables inspects it on a second connection
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        )
        event.listen(engine, "connect", _use_wal_without_waiting_for_the_disk)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        run_shards = [name for name in self._engines if name != INDEX_SHARD_NAME]
        for name in run_shards[: max(0, len(run_shards) - OPEN_RUN_SHARDS)]:
            self._engines.pop(name).dispose()
        return engine

    def _close_engines(self, close: bool = True) -> None:
        while self._engines:
            self._engines.popitem()[1].dispose(close=close)

    def has_table(self, table_name: str) -> bool:
        if table_name not in self._tables_present and super().has_table(table_name):
            self._tables_present.add(table_name)
        return table_name in self._tables_present

    def _has_asset_key_index_cols_on_connection(self, conn: Connection) -> bool:
        self._asset_key_index_cols = self._asset_key_index_cols or super()._has_asset_key_index_cols_on_connection(conn)
        return self._asset_key_index_cols

    def wipe(self) -> None:
        with self._db_lock:
            self._close_engines()
        self._tables_present.clear()
        self._asset_key_index_cols = False
        super().wipe()

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Within the block, this thread's asset events (materializations, observations) are
        kept and stored together when it ends, also when it ends with an error: one transaction
        per database instead of two to four per event. Only for events nothing reads before
        the block ends."""
        if getattr(self._batch, "events", None) is not None:
            yield
            return
        self._batch.events = []
        try:
            yield
        finally:
            events, self._batch.events = self._batch.events, None
            for run_id in dict.fromkeys(event.run_id for event in events):
                self._store_asset_events([event for event in events if event.run_id == run_id])

    def store_event(self, event: EventLogEntry) -> None:
        kept = getattr(self._batch, "events", None)
        if kept is not None and event.is_dagster_event and event.dagster_event_type in BATCHED_EVENTS:
            kept.append(event)
            return
        super().store_event(event)

    def _store_asset_events(self, events: Sequence[EventLogEntry]) -> None:
        """What `SqliteEventLogStorage.store_event` does for one run's asset events, for all
        of them at once: inserted into the run's shard, mirrored into the index with their
        tags and asset entries."""
        statements = [self.prepare_insert_event(event) for event in events]
        with self.run_connection(events[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        with self.index_transaction() as conn:
            event_ids = []
            for statement in statements:
                with db_result(conn, statement) as result:
                    event_ids.append(result.inserted_primary_key[0])
            self._store_asset_event_tags(conn, events, event_ids)
            for event, event_id in zip(events, event_ids):
                self._store_asset_event(conn, event, event_id)

    def delete_events(self, run_id: str) -> None:
        super().delete_events(run_id)
        with self._db_lock:
            engine = self._engines.pop(run_id, None)
            if engine is not None:
                engine.dispose()

    def dispose(self) -> None:
        with self._db_lock:
            self._close_engines()
        super().dispose()

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        """The rows Dagster writes, one per planned partition, with the event serialized once
        instead of once per row: a range run plans each check for all its partitions, so
        Dagster's loop costs N serializations of an N-key event (0.2 s at 256 images, growing
        with the square of the range)."""
        planned = event.get_dagster_event().event_specific_data
        partition_keys = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        row = {
            "asset_key": planned.asset_key.to_string(),
            "check_name": planned.check_name,
            "run_id": event.run_id,
            "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
            "evaluation_event": serialize_value(event),
            "evaluation_event_timestamp": self._event_insert_timestamp(event),
            "evaluation_event_storage_id": event_id,
        }
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert().values([{**row, "partition": key} for key in partition_keys]))


@contextmanager
def batched_events(instance) -> Iterator[None]:
    """`PooledSqliteEventLogStorage.batched` on an instance that uses it; elsewhere (Postgres,
    Dagster's own SQLite class) events are stored as they come."""
    storage = instance.event_log_storage
    if isinstance(storage, PooledSqliteEventLogStorage):
        with storage.batched():
            yield
    else:
        yield


def _use_wal_without_waiting_for_the_disk(connection, _record) -> None:
    """WAL with its recommended durability (module docstring): consistent after any crash,
    fsync at checkpoints. Set on every connection, outside any transaction: Dagster's own
    `PRAGMA journal_mode=WAL` runs inside the new shard's first transaction, where SQLite
    ignores it when the engine keeps its connection (run shards stayed in rollback mode)."""
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")


def _forget_connections_in_child() -> None:
    """A forked child must not use its parent's SQLite connections (SQLAlchemy's advice)."""
    for storage in list(_ALL_STORAGES):
        storage._close_engines(close=False)


os.register_at_fork(after_in_child=_forget_connections_in_child)

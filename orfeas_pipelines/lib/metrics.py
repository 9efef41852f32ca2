"""Metrics that hold whichever process did the work, and across restarts (contract section 8).

Nothing is counted in the memory of the process that scrapes: every figure is read, at
scrape time, from something durable that the working process wrote.

- Batches: the run workers call `record_batch` once per generated batch; it is one row in
  `state/metrics.sqlite` (WAL). The collector reads the rows added since its last scrape
  and keeps the histograms' running sums, so a scrape costs the new rows only.
- Intake decisions: `audit.log` (every decision of both channels), read from a remembered
  offset; a log that shrank is read again from the start.
- Images by final state and queue depth: `JobTracker` (lib/queue.py) over the ledger's
  image log and the jobs' status files; finished jobs are remembered in metrics.sqlite.

The exported names are in `METRIC_NAMES`; the Grafana dashboard uses exactly these.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from orfeas_pipelines.lib.home import OrfeasHome

if TYPE_CHECKING:
    from orfeas_pipelines.lib.queue import JobTracker, QueueDepth

SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
DEVICE_LABELS = ["backend", "device"]
METRIC_NAMES = (
    "orfeas_intake_decisions_total",
    "orfeas_images_total",
    "orfeas_queue_inbox_entries",
    "orfeas_queue_images_waiting",
    "orfeas_queue_images_running",
    "orfeas_generation_seconds",
    "orfeas_batch_size",
    "orfeas_oom_halvings_total",
    "orfeas_device_memory_peak_bytes",
    "orfeas_device_memory_in_use_bytes",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, backend TEXT NOT NULL, device TEXT NOT NULL,
    batch_size INTEGER NOT NULL, seconds REAL NOT NULL, peak_memory_bytes INTEGER NOT NULL,
    oom_halved INTEGER NOT NULL, memory_in_use_bytes INTEGER
);
CREATE TABLE IF NOT EXISTS finished_jobs (
    job_id TEXT PRIMARY KEY, first_seq INTEGER NOT NULL, succeeded INTEGER NOT NULL, failed INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS finished_jobs_by_seq ON finished_jobs (first_seq);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""


def metrics_path(home: OrfeasHome) -> Path:
    return home.state / "metrics.sqlite"


def connect(home: OrfeasHome) -> sqlite3.Connection:
    """A connection to `state/metrics.sqlite` in autocommit mode, WAL, schema in place."""
    home.state.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(metrics_path(home)), timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


def record_batch(
    home: OrfeasHome,
    backend: str,
    device: str,
    batch_size: int,
    seconds: float,
    peak_memory_bytes: int,
    oom_halved: bool,
    memory_in_use_bytes: int | None = None,
) -> None:
    """One generated batch, from whichever process ran it: one durable row.

    `peak_memory_bytes` is the device's peak during the batch; `memory_in_use_bytes`, when
    known (e.g. torch.cuda.memory_allocated() after it), is what the process still holds.
    """
    db = connect(home)
    try:
        db.execute(
            "INSERT INTO batches (at, backend, device, batch_size, seconds, peak_memory_bytes, oom_halved,"
            " memory_in_use_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), backend, device, int(batch_size), float(seconds), int(peak_memory_bytes),
             int(bool(oom_halved)), memory_in_use_bytes),
        )
    finally:
        db.close()


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.bounds = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1

    def buckets(self) -> list[tuple[str, int]]:
        return [(_bound(bound), count) for bound, count in zip(self.bounds, self.counts)] + [("+Inf", self.count)]


class _BatchTally:
    """Running sums over the batch rows read so far, by (backend, device)."""

    def __init__(self) -> None:
        self.last_id = 0
        self.seconds: dict[tuple[str, str], _Histogram] = defaultdict(lambda: _Histogram(SECONDS_BUCKETS))
        self.sizes: dict[tuple[str, str], _Histogram] = defaultdict(lambda: _Histogram(BATCH_SIZE_BUCKETS))
        self.oom_halvings: dict[tuple[str, str], int] = defaultdict(int)
        self.peak: dict[tuple[str, str], int] = {}
        self.in_use: dict[tuple[str, str], int] = {}

    def read(self, db: sqlite3.Connection) -> None:
        rows = db.execute(
            "SELECT id, backend, device, batch_size, seconds, peak_memory_bytes, oom_halved, memory_in_use_bytes"
            " FROM batches WHERE id > ? ORDER BY id",
            (self.last_id,),
        )
        for row_id, backend, device, size, seconds, peak, oom, in_use in rows:
            key = (backend, device)
            self.seconds[key].observe(seconds)
            self.sizes[key].observe(size)
            self.oom_halvings[key] += oom
            self.peak[key] = max(self.peak.get(key, 0), peak)
            if in_use is not None:
                self.in_use[key] = in_use
            self.last_id = row_id


class _AuditTally:
    """Intake decisions by (decision, code), read from audit.log incrementally."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.counts: dict[tuple[str, str], int] = defaultdict(int)

    def read(self) -> None:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            size = 0
        if size < self.offset:
            self.offset = 0
            self.counts.clear()
        if size == self.offset:
            return
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(size - self.offset)
        complete = data.rfind(b"\n") + 1
        for line in data[:complete].splitlines():
            try:
                record = json.loads(line)
                self.counts[(str(record["decision"]), str(record.get("code", "")))] += 1
            except (ValueError, KeyError, TypeError):
                continue
        self.offset += complete


class OrfeasCollector:
    """A prometheus_client collector reading the durable sources at scrape time."""

    def __init__(self, home: OrfeasHome, tracker: "JobTracker"):
        self.home = home
        self.tracker = tracker
        self._db = connect(home)
        self._lock = threading.Lock()
        self._batches = _BatchTally()
        self._audit = _AuditTally(home.audit_log)

    def describe(self) -> list:
        return []

    def collect(self) -> list:
        with self._lock:
            self._batches.read(self._db)
            self._audit.read()
            self.tracker.refresh(force=True)
            return self._families(self.tracker.depth(), self.tracker.finished_images())

    def _families(self, depth: "QueueDepth", finished: dict[str, int]) -> list:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        batches = self._batches
        families = [
            _labelled(
                CounterMetricFamily, "orfeas_intake_decisions",
                "Intake decisions of both channels by outcome and reason code", ["decision", "code"], self._audit.counts,
            ),
            _labelled(
                CounterMetricFamily, "orfeas_images", "Images of accepted jobs by final state", ["state"],
                {(state,): count for state, count in finished.items()},
            ),
            GaugeMetricFamily(
                "orfeas_queue_inbox_entries", "Entries waiting in inbox/ (drops not decided yet)", value=depth.inbox_entries
            ),
            GaugeMetricFamily("orfeas_queue_images_waiting", "Accepted images not started", value=depth.images_waiting),
            GaugeMetricFamily("orfeas_queue_images_running", "Images in a run now", value=depth.images_running),
        ]
        for name, help_text, histograms in (
            ("orfeas_generation_seconds", "Seconds per generated batch", batches.seconds),
            ("orfeas_batch_size", "Images per generated batch", batches.sizes),
        ):
            family = HistogramMetricFamily(name, help_text, labels=DEVICE_LABELS)
            for key, histogram in sorted(histograms.items()):
                family.add_metric(list(key), histogram.buckets(), histogram.total)
            families.append(family)
        return families + [
            _labelled(
                CounterMetricFamily, "orfeas_oom_halvings", "Batches halved after the device ran out of memory",
                DEVICE_LABELS, batches.oom_halvings,
            ),
            _labelled(
                GaugeMetricFamily, "orfeas_device_memory_peak_bytes", "Highest device memory peak of any batch",
                DEVICE_LABELS, batches.peak,
            ),
            _labelled(
                GaugeMetricFamily, "orfeas_device_memory_in_use_bytes", "Device memory held after the latest batch",
                DEVICE_LABELS, batches.in_use,
            ),
        ]


def _labelled(kind, name: str, help_text: str, labels: list[str], values: dict[tuple[str, ...], float]):
    family = kind(name, help_text, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def _bound(value: float) -> str:
    return repr(float(value))

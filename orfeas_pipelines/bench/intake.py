"""`orfeas bench intake`: how fast the intake verifies signed drops, and how long a bounded tick takes.

Each drop is a real signed job with one small PNG, written by the agent-side `write_job`.
Figures (a drop is two files, job.json and its image):
- files_per_second: one intake call takes every waiting drop, end to end: schema,
  signature, replay, hash and full decode, then the move to jobs/, the ledger, the audit
  line and the outbox status;
- checks_files_per_second: the same checks alone, deciding nothing (no moves, no writes);
- tick_seconds: one bounded tick (`max_jobs=500`) while `drops` jobs wait, which must stay
  far below Dagster's 60 s sensor timeout.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from orfeas_pipelines.lib.home import OrfeasHome
from orfeas_pipelines.lib.intake.inbox import process_inbox
from orfeas_pipelines.lib.intake.ledger import IntakeLedger, open_ledger
from orfeas_pipelines.lib.intake.registry import AgentRegistry, create_agent
from orfeas_pipelines.lib.intake.submit import write_job
from orfeas_pipelines.lib.intake.verify import ImageLimits, read_manifest, verify_job

TICK_MAX_JOBS = 500


def bench_intake(drops: int = 10_000, tmp_dir: str | Path | None = None) -> dict:
    """Measure the intake on `drops` signed one-image jobs in a throwaway home."""
    with tempfile.TemporaryDirectory(prefix="orfeas-bench-intake-", dir=tmp_dir) as root:
        home = OrfeasHome.at(Path(root) / "home").ensure()
        agent = create_agent(home.agents_file, "bench-agent", rate_per_minute=10 * drops + TICK_MAX_JOBS, max_images=1)
        image = Path(root) / "tile.png"
        image.write_bytes(_small_png())

        started = time.perf_counter()
        _drop(home, image, agent.agent_id, agent.secret, drops)
        write_seconds = time.perf_counter() - started

        registry = AgentRegistry.load(home.agents_file)
        with open_ledger(home) as ledger:
            checks_seconds = _time_checks_only(home, registry, ledger)
            started = time.perf_counter()
            tick = process_inbox(home, registry, ledger, datetime.now(timezone.utc), max_jobs=TICK_MAX_JOBS)
            tick_seconds = time.perf_counter() - started

            _drop(home, image, agent.agent_id, agent.secret, len(tick.accepted))
            started = time.perf_counter()
            full = process_inbox(home, registry, ledger, datetime.now(timezone.utc), max_jobs=drops, max_images=drops)
            verify_seconds = time.perf_counter() - started

    files = sum(1 + len(job.files) for job in full.accepted)
    return {
        "drops": drops,
        "accepted": len(full.accepted),
        "rejected": len(full.rejected),
        "verify_seconds": round(verify_seconds, 3),
        "files_per_second": round(files / verify_seconds, 1),
        "jobs_per_second": round(len(full.accepted) / verify_seconds, 1),
        "checks_files_per_second": round(2 * drops / checks_seconds, 1),
        "tick_max_jobs": TICK_MAX_JOBS,
        "tick_jobs": len(tick.accepted) + len(tick.rejected),
        "tick_seconds": round(tick_seconds, 3),
        "tick_waiting": drops,
        "write_seconds": round(write_seconds, 3),
    }


def _time_checks_only(home: OrfeasHome, registry: AgentRegistry, ledger: IntakeLedger) -> float:
    """Seconds to run every check on every waiting drop without deciding anything (no moves, no writes)."""
    now = time.time()
    started = time.perf_counter()
    for entry in sorted(os.scandir(home.inbox), key=lambda entry: entry.name):
        folder = Path(entry.path)
        verify_job(folder, read_manifest(folder), registry, ledger, home.jobs, now, 600, ImageLimits())
    return time.perf_counter() - started


def _drop(home: OrfeasHome, image: Path, agent_id: str, secret: str, count: int) -> None:
    for _ in range(count):
        write_job(home, [image], agent_id, secret)


def _small_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (16, 16), (180, 60, 60, 255)).save(buffer, format="PNG")
    return buffer.getvalue()

"""Which ledger images each intake-sensor evaluation handed out, so two never hand out the same one.

The daemon's sensor and `orfeas process` evaluate the same sensor, each from the cursor it
read when its tick began. A cursor read before the other's tick stored its own is stale:
evaluating from it would request the other's images again under another run key
(`images-1-4` beside `images-1-2`), and both runs would mesh them. So an evaluation claims
the images it hands out, in one transaction, and skips every live claim. An evaluation that
meets its own live claim (its tick failed before the cursor moved past it) hands it out again
exactly as claimed, so under the same run key, which stops a second launch. A claim dies when
its process is gone or when it is older than CLAIM_GRACE_SECONDS, and its images are then
offered again; until then it holds even after the cursors passed it.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from orfeas_pipelines.lib.home import OrfeasHome

CLAIM_GRACE_SECONDS = 600.0
"""Longer than any evaluation takes to record its result (partitions, events, the run)."""


def this_process() -> str:
    """The claim owner of this process: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claims_path(home: OrfeasHome) -> Path:
    return home.state / "claims.sqlite"


@dataclass(frozen=True)
class Claimed:
    """What one evaluation claimed, and how far from its cursor the images are handed out."""

    images: list
    through: int


class ImageClaims:
    """The claims, in `state/claims.sqlite` beside the ledger."""

    def __init__(self, path: Path):
        self._db = sqlite3.connect(str(path), timeout=60.0, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS claims (last_seq INTEGER PRIMARY KEY, first_seq INTEGER NOT NULL, "
            "owner TEXT NOT NULL, at REAL NOT NULL)"
        )

    def __enter__(self) -> ImageClaims:
        return self

    def __exit__(self, *_) -> None:
        self._db.close()

    def claim_next(self, cursor: int, owner: str, now: float, pick: Callable[[int, int | None], Sequence]) -> Claimed:
        """Claim and return what `pick(after, before)` chooses among images with after < seq < before
        (before None: no bound) that no live claim holds; items have `.seq`.

        An owner's own live claim met on the way is handed out again exactly as claimed (the
        same range, so the same run key: a retried tick creates no second run) and never
        merged with newer images, which under another run key would run its images twice.
        `through` is how far the images are handed out from `cursor`: the last image returned,
        or the end of the live claims skipped, so an evaluation that found everything taken
        never stores a cursor behind the one that took it.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._forget_dead(now)
            picked, after = [], cursor
            for first, last, claim_owner in [*self._live(), (None, None, None)]:
                if last is not None and last <= after:
                    continue
                picked = list(pick(after, first))
                if picked or last is None:
                    break
                if claim_owner == owner:
                    picked = list(pick(first - 1, last + 1))
                    break
                after = last
            if picked:
                self._db.execute(
                    "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?)", (picked[-1].seq, picked[0].seq, owner, now)
                )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return Claimed(picked, picked[-1].seq if picked else after)

    def _live(self) -> list[tuple[int, int, str]]:
        """(first, last, owner) of every claim still standing (dead ones are forgotten first)."""
        return self._db.execute("SELECT first_seq, last_seq, owner FROM claims ORDER BY first_seq").fetchall()

    def _forget_dead(self, now: float) -> None:
        """Drop claims whose owner ended or that are older than CLAIM_GRACE_SECONDS. An owner's
        own claims stay until then: its next evaluation (a daemon ticks every few seconds) must
        not release images another process, evaluating from an older cursor, would then take."""
        rows = self._db.execute("SELECT last_seq, owner, at FROM claims").fetchall()
        dead = [(last,) for last, claim_owner, at in rows if _is_dead(claim_owner, at, now)]
        self._db.executemany("DELETE FROM claims WHERE last_seq = ?", dead)

    def held_elsewhere(self, owner: str, now: float) -> list[tuple[int, int]]:
        """(first, last) seq ranges that live evaluations other than `owner` claimed: images they may
        still be registering, whose run may not exist yet (a drain must leave them alone)."""
        rows = self._db.execute("SELECT first_seq, last_seq, owner, at FROM claims ORDER BY first_seq").fetchall()
        return [
            (first, last) for first, last, claim_owner, at in rows if claim_owner != owner and not _is_dead(claim_owner, at, now)
        ]


def keys_claimed_elsewhere(home: OrfeasHome, owner: str, now: float) -> set[str]:
    """Partition keys of the images that live evaluations other than `owner` claimed (in the
    home's `state/claims.sqlite`), for the drain to leave alone."""
    from orfeas_pipelines.lib.intake.ledger import open_ledger

    if not claims_path(home).exists():
        return set()
    with ImageClaims(claims_path(home)) as claims, open_ledger(home) as ledger:
        return {
            image.partition_key
            for first, last in claims.held_elsewhere(owner, now)
            for image in ledger.images_after(first - 1, last - first + 1)
        }


def _is_dead(claim_owner: str, at: float, now: float) -> bool:
    return now - at > CLAIM_GRACE_SECONDS or is_gone(claim_owner)


def is_gone(owner: str) -> bool:
    """Whether the `host:pid` process (`this_process()` of some process) is known to have ended:
    only a process on this host can be checked; any other counts as running."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, as another user
    return False

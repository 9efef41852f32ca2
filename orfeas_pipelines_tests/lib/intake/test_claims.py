"""Image claims: two sensor evaluations never hand out the same ledger image."""

import os
import socket
import subprocess
from dataclasses import dataclass

import pytest

from orfeas_pipelines.lib.intake.claims import CLAIM_GRACE_SECONDS, ImageClaims

HOST = socket.gethostname()
ME = f"{HOST}:{os.getpid()}"
LIVE_OTHER = f"{HOST}:{os.getppid()}"


@dataclass(frozen=True)
class Image:
    seq: int


def pick_from(last_seq: int, limit: int = 100):
    """What the ledger would offer: images after `after` and below `before`, at most `limit`."""

    def pick(after, before):
        top = last_seq if before is None else min(last_seq, before - 1)
        return [Image(seq) for seq in range(after + 1, top + 1)][:limit]

    return pick


def seqs(claimed):
    return [image.seq for image in claimed.images]


@pytest.fixture
def claims(tmp_path):
    with ImageClaims(tmp_path / "claims.sqlite") as claims:
        yield claims


def test_a_stale_cursor_skips_what_a_live_evaluation_claimed(claims):
    assert seqs(claims.claim_next(0, LIVE_OTHER, 100.0, pick_from(4))) == [1, 2, 3, 4]
    assert seqs(claims.claim_next(0, ME, 101.0, pick_from(8))) == [5, 6, 7, 8]
    assert seqs(claims.claim_next(0, ME, 102.0, pick_from(8))) == [5, 6, 7, 8], "its own claim, offered again"
    again = claims.claim_next(0, ME, 103.0, pick_from(12))
    assert seqs(again) == [5, 6, 7, 8] and again.through == 8, "as claimed: never merged with newer images"


def test_a_gap_below_a_live_claim_is_handed_out_without_crossing_it(claims):
    claims.claim_next(4, LIVE_OTHER, 100.0, pick_from(8))  # the other evaluation holds 5-8
    assert seqs(claims.claim_next(0, ME, 101.0, pick_from(12))) == [1, 2, 3, 4]
    assert seqs(claims.claim_next(4, f"{HOST}:1", 102.0, pick_from(12))) == [9, 10, 11, 12]


def test_a_claim_of_a_gone_process_or_past_the_grace_is_offered_again_as_the_same_range(claims):
    gone = subprocess.Popen(["true"])
    gone.wait()
    claims.claim_next(0, f"{HOST}:{gone.pid}", 100.0, pick_from(4))
    assert seqs(claims.claim_next(0, ME, 101.0, pick_from(6, limit=4))) == [1, 2, 3, 4]
    claims.claim_next(4, LIVE_OTHER, 200.0, pick_from(6))
    assert seqs(claims.claim_next(4, ME, 200.0 + CLAIM_GRACE_SECONDS + 1, pick_from(6))) == [5, 6]


def test_a_claim_a_cursor_has_passed_still_holds_against_a_staler_cursor(claims):
    claims.claim_next(0, LIVE_OTHER, 100.0, pick_from(4))
    assert seqs(claims.claim_next(4, ME, 101.0, pick_from(4))) == []
    taken = claims.claim_next(0, f"{HOST}:1", 102.0, pick_from(4))
    assert seqs(taken) == [] and taken.through == 4, "the cursor moves past what others took, never back"


def test_an_owners_next_evaluation_keeps_its_claim_from_an_evaluation_on_an_older_cursor(claims):
    assert seqs(claims.claim_next(0, LIVE_OTHER, 100.0, pick_from(4))) == [1, 2, 3, 4]
    idle = claims.claim_next(4, LIVE_OTHER, 104.0, pick_from(4))  # the daemon ticks again: nothing new
    assert seqs(idle) == [] and idle.through == 4
    # Another process evaluates from the cursor it read before the first tick was stored.
    assert seqs(claims.claim_next(0, ME, 105.0, pick_from(6))) == [5, 6]

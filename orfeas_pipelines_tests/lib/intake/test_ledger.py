"""The intake ledger behaves the same on SQLite and on a real Postgres (the deployment's servers)."""

import multiprocessing
import sqlite3

import pytest

from orfeas_pipelines.lib.intake.ledger import (
    AcceptedJob,
    ImageFacts,
    IntakeLedger,
    LedgerImage,
    ledger_location,
    open_ledger,
    partition_key,
)
from orfeas_pipelines_tests.deploy.conftest import postgres_server, postgres_url, query, server_root  # noqa: F401

RACED_NONCES = 40


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, tmp_path):
    """Where a fresh ledger lives: a SQLite file, or an empty database on the session's Postgres."""
    if request.param == "sqlite":
        return tmp_path / "intake.sqlite"
    return request.getfixturevalue("postgres_url")


def job(job_id: str, agent_id: str = "agent-a", files=("a.png", "b.png")) -> AcceptedJob:
    return AcceptedJob(job_id, agent_id, list(files), [partition_key(job_id, f) for f in files], ("stl", "glb"), 64, 9)


def accept(ledger: IntakeLedger, accepted: AcceptedJob, nonce: str, at: float) -> None:
    ledger.record_accepted(accepted, nonce, at)
    ledger.log_images(accepted, [ImageFacts(file, "ab" * 32, 100, 16, 8) for file in accepted.files])


def test_seen_nonces_and_job_ids_survive_reopening(location):
    with IntakeLedger(location) as ledger, ledger.transaction():
        ledger.record_accepted(job("job-1"), "nonce-1", 100.0)
        ledger.record_rejected("job-2", "agent-a", "nonce-2", 100.0)
    with IntakeLedger(location) as reopened:
        assert reopened.nonce_seen("agent-a", "nonce-1") and reopened.nonce_seen("agent-a", "nonce-2")
        assert not reopened.nonce_seen("agent-b", "nonce-1")
        assert reopened.job_seen("job-1") and reopened.job_seen("job-2") and not reopened.job_seen("job-3")


def test_image_log_pages_by_seq_and_the_cursor_is_one_integer(location):
    with IntakeLedger(location) as ledger:
        assert ledger.last_seq() == 0 and ledger.images_after(0, 10) == []
        with ledger.transaction():
            for index in range(5):
                accept(ledger, job(f"job-{index}"), f"n{index}", 100.0)
        first = ledger.images_after(0, 4)
        rest = ledger.images_after(first[-1].seq, 100)
        assert [image.partition_key for image in first + rest] == [
            f"job-{index}/{file}" for index in range(5) for file in ("a.png", "b.png")
        ]
        assert len(first) == 4 and ledger.last_seq() == rest[-1].seq
        assert all(a.seq < b.seq for a, b in zip(first + rest, (first + rest)[1:]))


def test_accepted_job_keeps_parameters_and_images(location):
    with IntakeLedger(location) as ledger:
        with ledger.transaction():
            accept(ledger, job("job-1"), "n1", 100.0)
            ledger.record_rejected("job-2", "agent-a", "n2", 100.0)
        assert ledger.accepted_job("job-1") == job("job-1")
        assert ledger.accepted_job("job-2") is None and ledger.accepted_job("nope") is None


def test_rate_window_counts_only_recent_accepted_jobs_of_that_agent(location):
    with IntakeLedger(location) as ledger, ledger.transaction():
        ledger.record_accepted(job("old"), "n0", 10.0)
        ledger.record_accepted(job("new-1"), "n1", 100.0)
        ledger.record_accepted(job("new-2"), "n2", 110.0)
        ledger.record_accepted(job("other", agent_id="agent-b"), "n3", 110.0)
        ledger.record_rejected("rejected", "agent-a", "n4", 110.0)
        assert ledger.accepted_since("agent-a", 60.0) == 2
        assert ledger.accepted_since("agent-b", 60.0) == 1


def test_a_failed_transaction_leaves_nothing(location):
    with IntakeLedger(location) as ledger:
        with pytest.raises(RuntimeError), ledger.transaction():
            ledger.record_accepted(job("job-1"), "n1", 100.0)
            raise RuntimeError("crash mid-tick")
        assert not ledger.job_seen("job-1") and ledger.last_seq() == 0


def test_a_database_error_is_a_sqlite3_error_on_both_and_the_ledger_stays_usable(location):
    """Intake tells the ledger's trouble from an entry's by `sqlite3.Error`, whatever the backend."""
    with IntakeLedger(location) as ledger:
        with pytest.raises(sqlite3.Error), ledger.transaction():
            ledger.record_accepted(job("job-1"), "n1", 100.0)
            ledger.record_accepted(job("job-1"), "n2", 100.0)
        assert not ledger.job_seen("job-1")
        with ledger.transaction():
            ledger.record_accepted(job("job-1"), "n1", 100.0)
        assert ledger.job_seen("job-1")


def test_deferral_keeps_the_first_time_until_the_manifest_changes(location):
    with IntakeLedger(location) as ledger:
        assert ledger.deferred_since("entry", "digest-1") is None and not ledger.has_deferrals()
        assert ledger.deferral_started("entry", "digest-1", 100.0) == (100.0, True)
        assert ledger.has_deferrals()
        assert ledger.deferral_started("entry", "digest-1", 200.0) == (100.0, False)
        assert ledger.deferred_since("entry", "digest-1") == 100.0
        assert ledger.deferral_started("entry", "digest-2", 300.0) == (300.0, True)
        ledger.clear_deferral("entry")
        assert ledger.deferred_since("entry", "digest-2") is None


def test_image_facts_are_stored_and_an_old_database_gains_their_columns(tmp_path):
    path = tmp_path / "intake.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE images (seq INTEGER PRIMARY KEY AUTOINCREMENT, partition_key TEXT NOT NULL UNIQUE, "
        "job_id TEXT NOT NULL, agent_id TEXT NOT NULL, file TEXT NOT NULL)"
    )
    old.execute("INSERT INTO images (partition_key, job_id, agent_id, file) VALUES ('old/a.png', 'old', 'x', 'a.png')")
    old.commit()
    old.close()
    with IntakeLedger(path) as ledger:
        with ledger.transaction():
            accept(ledger, job("job-1", files=("a.png",)), "n1", 100.0)
        assert ledger.images_after(0, 10) == [
            LedgerImage(1, "old/a.png", "old", "a.png"),
            LedgerImage(2, "job-1/a.png", "job-1", "a.png", "ab" * 32, 100, 16, 8),
        ]
        assert ledger.image("job-1/a.png").sha256 == "ab" * 32 and ledger.image("nope/a.png") is None


def test_journalled_decisions_keep_their_audit_line_until_finished(location):
    with IntakeLedger(location) as ledger:
        with ledger.transaction():
            first = ledger.add_pending({"kind": "defer", "job": None}, {"decision": "deferred"})
            second = ledger.add_pending({"kind": "defer", "job": None}, {"decision": "rejected"})
        ledger.mark_audited(first)
        pending = ledger.pending()
        assert [(item.seq, item.audited, item.audit) for item in pending] == [
            (first, True, {"decision": "deferred", "seq": first}),
            (second, False, {"decision": "rejected", "seq": second}),
        ]
        ledger.finish_pending([first])
        assert [item.seq for item in ledger.pending()] == [second]


def test_deferrals_and_holds_do_not_outlive_their_entry(location):
    with IntakeLedger(location) as ledger:
        ledger.deferral_started("gone", "digest", 100.0)
        ledger.deferral_started("here", "digest", 100.0)
        ledger.hold("gone-too", "bug", 1, 200.0)
        ledger.forget_missing_entries({"here"})
        assert ledger.deferred_since("gone", "digest") is None and ledger.deferred_since("here", "digest") == 100.0
        assert ledger.holds() == {}


def claim_nonces(location, worker: int, start, claimed) -> None:
    """One process of the race: accept a job for every nonce not seen yet, one transaction each."""
    with IntakeLedger(location) as ledger:
        start.wait()
        won = []
        for index in range(RACED_NONCES):
            with ledger.transaction():
                if not ledger.nonce_seen("agent-a", f"nonce-{index}"):
                    ledger.record_accepted(job(f"job-{worker}-{index}"), f"nonce-{index}", 100.0)
                    won.append(index)
        claimed.put(won)


def test_two_processes_racing_on_the_same_nonces_accept_each_nonce_once(location):
    IntakeLedger(location).close()  # the schema exists before the race
    context = multiprocessing.get_context("spawn")
    start, claimed = context.Barrier(2), context.Queue()
    racers = [context.Process(target=claim_nonces, args=(location, worker, start, claimed)) for worker in (1, 2)]
    for racer in racers:
        racer.start()
    won = [claimed.get(timeout=60) for _ in racers]
    for racer in racers:
        racer.join(timeout=10)

    assert sorted(won[0] + won[1]) == list(range(RACED_NONCES)), "a nonce was accepted twice, or not at all"
    with IntakeLedger(location) as ledger:
        assert ledger.accepted_since("agent-a", 0.0) == RACED_NONCES


def test_the_factory_opens_the_postgres_ledger_named_by_the_environment(home, postgres_url, monkeypatch):
    with open_ledger(home) as ledger:
        assert ledger.location == home.state / "intake.sqlite"
    monkeypatch.setenv("ORFEAS_LEDGER_URL", postgres_url.replace("postgresql://", "postgresql+psycopg2://"))
    (home.state / "intake.sqlite").unlink()
    with open_ledger(home) as ledger, ledger.transaction():
        accept(ledger, job("job-1"), "n1", 100.0)

    assert query(postgres_url, "SELECT partition_key FROM orfeas_intake.images ORDER BY seq") == [
        ("job-1/a.png",), ("job-1/b.png",)
    ]
    assert not (home.state / "intake.sqlite").exists()
    monkeypatch.setenv("ORFEAS_LEDGER_URL", "sqlite:///tmp/intake.sqlite")
    with pytest.raises(ValueError, match="ORFEAS_LEDGER_URL: expected a postgresql:// URL"):
        ledger_location(home)


def test_a_postgres_ledger_reopens_a_connection_the_server_dropped(postgres_url):
    with IntakeLedger(postgres_url) as ledger:
        with ledger.transaction():
            accept(ledger, job("job-1"), "n1", 100.0)
        query(postgres_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
              "WHERE application_name = 'orfeas-intake-ledger'")
        assert ledger.job_seen("job-1")

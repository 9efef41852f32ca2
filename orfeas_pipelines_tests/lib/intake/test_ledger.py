import pytest

from orfeas_pipelines.lib.intake.ledger import AcceptedJob, IntakeLedger, partition_key


def job(job_id: str, agent_id: str = "agent-a", files=("a.png", "b.png")) -> AcceptedJob:
    return AcceptedJob(job_id, agent_id, list(files), [partition_key(job_id, f) for f in files], ("stl", "glb"), 64, 9)


def test_seen_nonces_and_job_ids_survive_reopening(tmp_path):
    path = tmp_path / "intake.sqlite"
    with IntakeLedger(path) as ledger, ledger.transaction():
        ledger.record_accepted(job("job-1"), "nonce-1", 100.0)
        ledger.record_rejected("job-2", "agent-a", "nonce-2", 100.0)
    with IntakeLedger(path) as reopened:
        assert reopened.nonce_seen("agent-a", "nonce-1") and reopened.nonce_seen("agent-a", "nonce-2")
        assert not reopened.nonce_seen("agent-b", "nonce-1")
        assert reopened.job_seen("job-1") and reopened.job_seen("job-2") and not reopened.job_seen("job-3")


def test_image_log_pages_by_seq_and_the_cursor_is_one_integer(tmp_path):
    with IntakeLedger(tmp_path / "intake.sqlite") as ledger:
        assert ledger.last_seq() == 0 and ledger.images_after(0, 10) == []
        with ledger.transaction():
            for index in range(5):
                ledger.record_accepted(job(f"job-{index}"), f"n{index}", 100.0)
        first = ledger.images_after(0, 4)
        rest = ledger.images_after(first[-1].seq, 100)
        assert [image.partition_key for image in first + rest] == [
            f"job-{index}/{file}" for index in range(5) for file in ("a.png", "b.png")
        ]
        assert len(first) == 4 and ledger.last_seq() == rest[-1].seq
        assert all(a.seq < b.seq for a, b in zip(first + rest, (first + rest)[1:]))


def test_accepted_job_keeps_parameters_and_images(tmp_path):
    with IntakeLedger(tmp_path / "intake.sqlite") as ledger:
        with ledger.transaction():
            ledger.record_accepted(job("job-1"), "n1", 100.0)
            ledger.record_rejected("job-2", "agent-a", "n2", 100.0)
        assert ledger.accepted_job("job-1") == job("job-1")
        assert ledger.accepted_job("job-2") is None and ledger.accepted_job("nope") is None


def test_rate_window_counts_only_recent_accepted_jobs_of_that_agent(tmp_path):
    with IntakeLedger(tmp_path / "intake.sqlite") as ledger, ledger.transaction():
        ledger.record_accepted(job("old"), "n0", 10.0)
        ledger.record_accepted(job("new-1"), "n1", 100.0)
        ledger.record_accepted(job("new-2"), "n2", 110.0)
        ledger.record_accepted(job("other", agent_id="agent-b"), "n3", 110.0)
        ledger.record_rejected("rejected", "agent-a", "n4", 110.0)
        assert ledger.accepted_since("agent-a", 60.0) == 2
        assert ledger.accepted_since("agent-b", 60.0) == 1


def test_a_failed_transaction_leaves_nothing(tmp_path):
    with IntakeLedger(tmp_path / "intake.sqlite") as ledger:
        with pytest.raises(RuntimeError), ledger.transaction():
            ledger.record_accepted(job("job-1"), "n1", 100.0)
            raise RuntimeError("crash mid-tick")
        assert not ledger.job_seen("job-1") and ledger.last_seq() == 0


def test_deferral_keeps_the_first_time_until_the_manifest_changes(tmp_path):
    with IntakeLedger(tmp_path / "intake.sqlite") as ledger:
        assert ledger.deferred_since("entry", "digest-1") is None and not ledger.has_deferrals()
        assert ledger.deferral_started("entry", "digest-1", 100.0) == (100.0, True)
        assert ledger.has_deferrals()
        assert ledger.deferral_started("entry", "digest-1", 200.0) == (100.0, False)
        assert ledger.deferred_since("entry", "digest-1") == 100.0
        assert ledger.deferral_started("entry", "digest-2", 300.0) == (300.0, True)
        ledger.clear_deferral("entry")
        assert ledger.deferred_since("entry", "digest-2") is None


def test_unknown_job_ids_lists_those_without_a_decision(tmp_path):
    with IntakeLedger(tmp_path / "intake.sqlite") as ledger:
        with ledger.transaction():
            ledger.record_accepted(job("job-1"), "n1", 100.0)
        assert ledger.unknown_job_ids(["job-1", "job-9"]) == ["job-9"]

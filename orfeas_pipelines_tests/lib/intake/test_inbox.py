import json
from datetime import datetime, timedelta, timezone

import pytest

import orfeas_pipelines.lib.intake.inbox as inbox_module
from orfeas_pipelines.lib.intake.audit import read_audit
from orfeas_pipelines.lib.intake.inbox import process_inbox
from orfeas_pipelines.lib.intake.ledger import IntakeLedger
from orfeas_pipelines.lib.intake.registry import AgentRegistry
from orfeas_pipelines.lib.outbox import read_status
from orfeas_pipelines_tests.lib.intake.drops import (
    drop_bad_corpus,
    drop_folder,
    drop_good_job,
    drop_replays,
    make_agent,
    make_home,
    png_bytes,
    signed_manifest,
    tree_digest,
)

NOW = datetime(2026, 11, 23, 17, 0, tzinfo=timezone.utc)


@pytest.fixture
def home(tmp_path):
    return make_home(tmp_path / "home")


def tick(home, now=NOW, **kwargs):
    with IntakeLedger(home.state / "intake.sqlite") as ledger:
        return process_inbox(home, AgentRegistry.load(home.agents_file), ledger, now, **kwargs)


def snapshot(home):
    return {path.name: tree_digest(path) for path in home.inbox.iterdir()}


def quarantined_content(home, rejection):
    target = home.root / rejection.quarantined_as
    wrapped = target / rejection.entry
    if wrapped.exists() or wrapped.is_symlink():
        assert sorted(path.name for path in target.iterdir()) == sorted([rejection.entry, "reason.json"])
        return tree_digest(wrapped)
    return {name: digest for name, digest in tree_digest(target).items() if name != "reason.json"}


def test_bad_drop_corpus_is_quarantined_byte_for_byte_beside_accepted_good_jobs(home, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    agent = make_agent(home, formats=("stl", "obj"), max_images=2)
    good = [drop_good_job(home, agent, NOW, name=name) for name in ("chair.png", "lamp.png")]
    expected = drop_bad_corpus(home, agent, NOW, outside)
    before = snapshot(home)

    outcome = tick(home)

    assert sorted(job.job_id for job in outcome.accepted) == sorted(good)
    assert {rejection.entry: rejection.code for rejection in outcome.rejected} == expected
    assert outcome.deferred == [] and outcome.remaining == 0
    assert list(home.inbox.iterdir()) == []
    for job_id, image in zip(good, ("chair.png", "lamp.png")):
        assert sorted(before[job_id]) == sorted([image, "job.json"])
        assert tree_digest(home.jobs / job_id) == before[job_id]
        assert read_status(home, job_id)["state"] == "queued"
    for rejection in outcome.rejected:
        assert quarantined_content(home, rejection) == before[rejection.entry], rejection.entry
        reason = json.loads((home.root / rejection.quarantined_as / "reason.json").read_text())
        assert set(reason) == {"code", "message", "at"}
        assert reason["code"] == expected[rejection.entry] and "\n" not in reason["message"]
    assert tree_digest(outside) == {"secret.png": tree_digest(outside / "secret.png")["."]}

    lines = read_audit(home.audit_log)
    assert sorted((line["entry"], line["decision"], line.get("code")) for line in lines) == sorted(
        [(job_id, "accepted", None) for job_id in good]
        + [(entry, "rejected", code) for entry, code in expected.items()]
    )
    assert read_status(home, "tampered")["reason"]["code"] == "bad_signature"
    assert read_status(home, "glb-format")["reason"]["code"] == "format_not_allowed"
    assert read_status(home, "other-id") is None and read_status(home, "wrong-folder") is None

    written = home.audit_log.read_text() + "".join(path.read_text() for path in home.quarantine.glob("*/reason.json"))
    written += "".join(path.read_text() for path in home.outbox.glob("*/status.json"))
    assert agent.secret not in written
    assert all(agent.secret not in f"{rejection!r} {rejection.message}" for rejection in outcome.rejected)


def test_replays_are_refused_even_after_a_restart(home):
    agent = make_agent(home)
    original = drop_good_job(home, agent, NOW)
    assert [job.job_id for job in tick(home).accepted] == [original]
    expected = drop_replays(home, agent, NOW, original)
    outcome = tick(home)
    assert {rejection.entry: rejection.code for rejection in outcome.rejected} == expected
    assert outcome.accepted == []
    assert read_status(home, original)["state"] == "queued"
    assert sorted(path.name for path in home.jobs.iterdir()) == [original]


def test_the_same_nonce_twice_in_one_tick_accepts_only_the_first(home):
    agent = make_agent(home)
    image = png_bytes()
    for job_id in ("job-a", "job-b"):
        drop_folder(home, job_id, signed_manifest(agent, job_id, {"a.png": image}, NOW, nonce="same"), {"a.png": image})
    outcome = tick(home)
    assert [job.job_id for job in outcome.accepted] == ["job-a"]
    assert [(rejection.entry, rejection.code) for rejection in outcome.rejected] == [("job-b", "replay")]


def test_incomplete_and_hidden_entries_are_left_alone(home):
    agent = make_agent(home)
    (home.inbox / "still-writing").mkdir()
    (home.inbox / "still-writing" / "a.png").write_bytes(png_bytes())
    (home.inbox / ".job-x.tmp").mkdir()
    (home.inbox / ".partial-file").write_text("x")
    good = drop_good_job(home, agent, NOW)
    outcome = tick(home)
    assert [job.job_id for job in outcome.accepted] == [good]
    assert outcome.rejected == [] and outcome.remaining == 0
    assert sorted(path.name for path in home.inbox.iterdir()) == [".job-x.tmp", ".partial-file", "still-writing"]
    assert [line["entry"] for line in read_audit(home.audit_log)] == [good]


def test_an_entry_the_intake_fails_on_is_held_and_the_others_go_on(home, monkeypatch):
    agent = make_agent(home)
    poison = drop_good_job(home, agent, NOW, job_id="a-poison")
    good = drop_good_job(home, agent, NOW, job_id="b-good")
    real_verify = inbox_module.verify_job

    def verify(folder, raw, registry, ledger, *args):
        if folder.name == poison:
            ledger.record_rejected(poison, agent.agent_id, json.loads(raw)["nonce"], 0.0)
            raise RuntimeError("a library bug")
        return real_verify(folder, raw, registry, ledger, *args)

    monkeypatch.setattr(inbox_module, "verify_job", verify)
    before = tree_digest(home.inbox / poison)
    outcome = tick(home)

    assert [job.job_id for job in outcome.accepted] == [good]
    [held] = outcome.deferred
    assert held.entry == poison and "RuntimeError: a library bug" in held.reason
    assert tree_digest(home.inbox / poison) == before
    [line] = [line for line in read_audit(home.audit_log) if line["decision"] == "deferred"]
    assert line["entry"] == poison and "stays in inbox/" in line["message"]
    monkeypatch.setattr(inbox_module, "verify_job", real_verify)
    assert [job.job_id for job in tick(home).accepted] == [poison], "its ledger writes were undone"


def test_rate_limit_defers_without_losing_or_staling_and_does_not_starve_others(home):
    flooder = make_agent(home, "agent-a", rate_per_minute=2)
    other = make_agent(home, "agent-b")
    flood = [drop_good_job(home, flooder, NOW, job_id=f"a-{index}") for index in range(5)]
    quiet = drop_good_job(home, other, NOW, job_id="b-0")

    first = tick(home)
    assert [job.job_id for job in first.accepted] == ["a-0", "a-1", "b-0"]
    assert [deferral.entry for deferral in first.deferred] == ["a-2", "a-3", "a-4"]
    assert sorted(path.name for path in home.inbox.iterdir()) == ["a-2", "a-3", "a-4"]
    deferred_lines = [line for line in read_audit(home.audit_log) if line["decision"] == "deferred"]
    assert [line["entry"] for line in deferred_lines] == ["a-2", "a-3", "a-4"]
    assert "jobs per minute" in deferred_lines[0]["message"]
    assert read_status(home, "a-2")["state"] == "queued"

    again = tick(home, NOW + timedelta(seconds=30))
    assert again.accepted == [] and len(again.deferred) == 3
    assert len(read_audit(home.audit_log)) == len(first.accepted) + 3

    later = tick(home, NOW + timedelta(minutes=11))
    assert [job.job_id for job in later.accepted] == ["a-2", "a-3"] and later.rejected == []
    last = tick(home, NOW + timedelta(minutes=13))
    assert [job.job_id for job in last.accepted] == ["a-4"]
    assert list(home.inbox.iterdir()) == []
    assert sorted(path.name for path in home.jobs.iterdir()) == sorted(flood + [quiet])


def test_bounded_ticks_drain_the_inbox_in_order(home):
    agent = make_agent(home, rate_per_minute=1000)
    ids = [drop_good_job(home, agent, NOW, job_id=f"job-{index:02d}") for index in range(30)]
    taken, remaining = [], []
    for _ in range(3):
        outcome = tick(home, max_jobs=10)
        taken += [job.job_id for job in outcome.accepted]
        remaining.append(outcome.remaining)
    assert taken == ids and remaining == [20, 10, 0]
    assert list(home.inbox.iterdir()) == []


def test_image_budget_stops_a_tick_before_the_job_that_would_exceed_it(home):
    agent = make_agent(home)
    image = png_bytes()
    files = {"a.png": image, "b.png": image}
    for job_id in ("job-1", "job-2", "job-3"):
        drop_folder(home, job_id, signed_manifest(agent, job_id, files, NOW), files)
    outcome = tick(home, max_images=3)
    assert [job.job_id for job in outcome.accepted] == ["job-1"] and outcome.remaining == 2
    assert [key for job in outcome.accepted for key in job.partition_keys] == ["job-1/a.png", "job-1/b.png"]


def test_quarantine_never_overwrites_and_wraps_entries_with_their_own_reason_json(home):
    (home.inbox / "stray.txt").write_text("first")
    tick(home)
    (home.inbox / "stray.txt").write_text("second")
    drop_folder(home, "has-reason", b"{", {"reason.json": b'{"mine": true}'})
    outcome = tick(home)
    assert sorted(rejection.quarantined_as for rejection in outcome.rejected) == [
        "quarantine/has-reason",
        "quarantine/stray.txt.1",
    ]
    assert (home.quarantine / "stray.txt" / "stray.txt").read_text() == "first"
    assert (home.quarantine / "stray.txt.1" / "stray.txt").read_text() == "second"
    assert (home.quarantine / "has-reason" / "has-reason" / "reason.json").read_bytes() == b'{"mine": true}'
    assert json.loads((home.quarantine / "has-reason" / "reason.json").read_text())["code"] == "bad_json"


def test_accepted_jobs_are_in_the_image_log_with_their_parameters(home):
    agent = make_agent(home)
    job_id = drop_good_job(home, agent, NOW, formats=("stl", "ply"), resolution=64, seed=5)
    outcome = tick(home)
    with IntakeLedger(home.state / "intake.sqlite") as ledger:
        assert [image.partition_key for image in ledger.images_after(0, 10)] == [f"{job_id}/chair.png"]
        stored = ledger.accepted_job(job_id)
    assert stored == outcome.accepted[0]
    assert (stored.formats, stored.resolution, stored.seed) == (("stl", "ply"), 64, 5)
    images = read_status(home, job_id)["images"]
    assert images == [{"file": "chair.png", "state": "queued", "outputs": {}, "metrics": {}}]


def test_a_tick_that_dies_after_moving_jobs_is_recovered_by_the_next(home, monkeypatch):
    agent = make_agent(home)
    job_id = drop_good_job(home, agent, NOW)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(inbox_module, "append_audit", crash)
    with pytest.raises(OSError, match="disk full"):
        tick(home)
    monkeypatch.undo()
    assert (home.jobs / job_id).is_dir() and read_status(home, job_id) is None

    outcome = tick(home)
    assert [job.job_id for job in outcome.accepted] == [job_id]
    assert read_status(home, job_id)["state"] == "queued"
    with IntakeLedger(home.state / "intake.sqlite") as ledger:
        assert [image.job_id for image in ledger.images_after(0, 10)] == [job_id]
    assert tick(home).accepted == []


def test_only_decides_the_named_entries_and_leaves_the_rest(home):
    agent = make_agent(home)
    image = png_bytes()
    for job_id in ("job-a", "job-b", "job-c"):
        drop_folder(home, job_id, signed_manifest(agent, job_id, {"a.png": image}, NOW), {"a.png": image})
    outcome = tick(home, only=["job-b"])
    assert [job.job_id for job in outcome.accepted] == ["job-b"]
    assert sorted(path.name for path in home.inbox.iterdir()) == ["job-a", "job-c"]

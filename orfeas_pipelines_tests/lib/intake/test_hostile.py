"""Each class of hostile or careless drop from issue 12, with every byte and audit line accounted for."""

import errno
import json
import os
import shutil
import sqlite3
import time
from collections import Counter
from datetime import timedelta

import pytest
from filelock import FileLock

import orfeas_pipelines.lib.intake.inbox as inbox_module
from orfeas_pipelines.lib.intake.audit import read_audit
from orfeas_pipelines.lib.intake.inbox import IntakeUnavailable
from orfeas_pipelines.lib.intake.ledger import IntakeLedger
from orfeas_pipelines.lib.intake.verify import ImageLimits
from orfeas_pipelines.lib.outbox import read_status
from orfeas_pipelines_tests.lib.intake.drops import (
    age_entries,
    costly_jpeg,
    drop_folder,
    drop_good_job,
    jpeg_with_scans,
    make_agent,
    png_bytes,
    png_with_chunks,
    signed_manifest,
    tree_digest,
)
from orfeas_pipelines_tests.lib.intake.test_inbox import NOW, tick

BAD_NAME = os.fsdecode(b"stray-\xff\xfe\nname")


def snapshot(home):
    """Every inbox entry, whatever its name, → its tree digest."""
    return {name: tree_digest(home.inbox / name) for name in os.listdir(home.inbox)}


def where_is(home, name):
    """Every place an entry's bytes now are: inbox/, jobs/<name>, or the quarantine folder naming it."""
    places = []
    if os.path.lexists(home.inbox / name):
        places.append(tree_digest(home.inbox / name))
    if os.path.lexists(home.jobs / name):
        places.append(tree_digest(home.jobs / name))
    for folder in home.quarantine.iterdir():
        reason = json.loads((folder / "reason.json").read_text())
        raw = bytes.fromhex(reason["entry_hex"]) if "entry_hex" in reason else reason["entry"].encode()
        if raw == os.fsencode(name):
            [inner] = [path for path in folder.iterdir() if path.name != "reason.json"]
            places.append(tree_digest(inner))
    return places


def assert_accounted(home, before):
    """Each dropped entry is in exactly one place, byte for byte, and each decision has one audit line."""
    for name, digest in before.items():
        assert where_is(home, name) == [digest], repr(name)
    lines = [line for line in read_audit(home.audit_log) if line["decision"] != "deferred"]
    counts = Counter(bytes.fromhex(line["entry_hex"]) if "entry_hex" in line else line["entry"] for line in lines)
    assert all(count == 1 for count in counts.values()), counts
    seqs = [line["seq"] for line in read_audit(home.audit_log)]
    assert len(seqs) == len(set(seqs))


def test_any_file_name_is_quarantined_under_a_safe_name_and_recorded_exactly(home):
    agent = make_agent(home)
    good = drop_good_job(home, agent, NOW)
    os.fsencode(BAD_NAME)
    (home.inbox / BAD_NAME).write_bytes(b"\x00junk")
    (home.inbox / os.fsdecode(b"folder-\xff")).mkdir()
    age_entries(home.inbox, os.listdir(home.inbox))
    before = snapshot(home)

    outcome = tick(home)

    assert [job.job_id for job in outcome.accepted] == [good] and read_status(home, good)["state"] == "queued"
    assert sorted(rejection.code for rejection in outcome.rejected) == ["not_a_job", "not_a_job"]
    assert all(path.name.isprintable() and path.name.isascii() for path in home.quarantine.iterdir())
    assert_accounted(home, before)
    [line] = [line for line in read_audit(home.audit_log) if line.get("entry_hex") == os.fsencode(BAD_NAME).hex()]
    assert line["entry"] == "stray-\\xff\\xfe\\x0aname"


def test_images_that_would_hold_the_tick_for_seconds_are_refused_at_once(home):
    agent = make_agent(home)
    slow = {
        "many-scans": ("a.jpg", jpeg_with_scans(64, 100_000), "too_many_scans"),
        "scans-times-pixels": ("a.jpg", jpeg_with_scans(1024, 250), "too_many_scans"),
        "many-chunks": ("a.png", png_with_chunks(png_bytes(), 10**6), "too_large"),
    }
    for job_id, (file, image, _) in slow.items():
        drop_folder(home, job_id, signed_manifest(agent, job_id, {file: image}, NOW), {file: image})
    before = snapshot(home)
    started = time.monotonic()
    outcome = tick(home)
    assert time.monotonic() - started < 10.0
    assert {rejection.entry: rejection.code for rejection in outcome.rejected} == {
        job_id: code for job_id, (_, _, code) in slow.items()
    }
    assert_accounted(home, before)


def test_an_image_whose_decoding_overruns_its_cpu_budget_is_quarantined_and_the_tick_goes_on(home):
    """What no structural check foresees is cut by the worker's CPU budget (a tiny one stands in for
    a pathological decoder here), and the tick decides the other entries."""
    agent = make_agent(home)
    photo = costly_jpeg()
    drop_folder(home, "slow-photo", signed_manifest(agent, "slow-photo", {"a.jpg": photo}, NOW), {"a.jpg": photo})
    good = drop_good_job(home, agent, NOW)
    before = snapshot(home)
    started = time.monotonic()
    outcome = tick(home, limits=ImageLimits(decode_cpu_seconds=0.01))
    assert time.monotonic() - started < 10.0
    [rejection] = outcome.rejected
    assert (rejection.entry, rejection.code) == ("slow-photo", "decode_too_slow")
    assert rejection.message == "image a.jpg: decoding takes over 0.01 s of CPU time"
    assert [job.job_id for job in outcome.accepted] == [good]
    assert_accounted(home, before)


def test_a_decode_the_busy_machine_cannot_finish_in_time_is_held_and_retried(home):
    """Past the wall clock within its CPU budget the image is not at fault: held, audited once, taken later."""
    agent = make_agent(home)
    photo = costly_jpeg()
    drop_folder(home, "photo", signed_manifest(agent, "photo", {"a.jpg": photo}, NOW), {"a.jpg": photo})
    before = snapshot(home)
    for seconds in (0, 20):
        outcome = tick(home, NOW + timedelta(seconds=seconds), limits=ImageLimits(decode_wall_seconds=0.001))
        [held] = outcome.deferred
        assert held.entry == "photo" and "wall-clock time within its CPU budget" in held.reason
    assert outcome.rejected == [] and snapshot(home) == before
    assert [line["decision"] for line in read_audit(home.audit_log)] == ["deferred"]
    assert [job.job_id for job in tick(home, NOW + timedelta(seconds=60)).accepted] == ["photo"]


def test_a_busy_lock_is_a_one_line_error(home):
    with FileLock(str(home.state / "intake.lock")):
        with pytest.raises(IntakeUnavailable, match="intake is busy") as caught:
            tick(home, lock_timeout=0.2)
    assert "\n" not in str(caught.value)


def test_a_directory_where_a_file_belongs_is_quarantined_once_not_held_forever(home):
    agent = make_agent(home)
    image = png_bytes()
    drop_folder(home, "json-is-dir", None, {"a.png": image})
    (home.inbox / "json-is-dir" / "job.json").mkdir()
    staging = home.inbox / ".image-is-dir.tmp"
    staging.mkdir()
    (staging / "a.png").mkdir()
    (staging / "job.json").write_text(json.dumps(signed_manifest(agent, "image-is-dir", {"a.png": image}, NOW)))
    os.rename(staging, home.inbox / "image-is-dir")
    age_entries(home.inbox, ["json-is-dir", "image-is-dir"])
    before = snapshot(home)

    outcome = tick(home)
    later = tick(home, NOW + timedelta(seconds=15))

    assert {rejection.entry: rejection.code for rejection in outcome.rejected} == {
        "json-is-dir": "not_a_job",
        "image-is-dir": "path_not_allowed",
    }
    assert later.rejected == later.deferred == [] and os.listdir(home.inbox) == []
    assert len(read_audit(home.audit_log)) == 2
    assert_accounted(home, before)


def test_a_held_entry_is_audited_once_per_reason_and_retried_with_backoff(home, monkeypatch):
    agent = make_agent(home)
    drop_good_job(home, agent, NOW, job_id="poison")

    def broken(*args):
        raise RuntimeError("a library bug")

    monkeypatch.setattr(inbox_module, "verify_job", broken)
    for seconds in (0, 5, 16, 20, 47, 400):
        tick(home, NOW + timedelta(seconds=seconds))
    assert [line["decision"] for line in read_audit(home.audit_log)] == ["deferred"]
    assert os.listdir(home.inbox) == ["poison"]


def test_a_flood_of_bad_drops_and_one_agents_backlog_do_not_delay_another_agent(home):
    flooder = make_agent(home, "agent-a", rate_per_minute=1000)
    quiet = make_agent(home, "agent-b")
    for index in range(300):
        drop_folder(home, f"0flood-{index:04d}", b"{", {})
    for index in range(20):
        drop_good_job(home, flooder, NOW, job_id=f"1backlog-{index:02d}")
    wanted = drop_good_job(home, quiet, NOW, job_id="zz-quiet")
    age_entries(home.inbox, [name for name in os.listdir(home.inbox) if name.startswith("0flood")])

    outcome = tick(home, max_jobs=5)

    assert wanted in [job.job_id for job in outcome.accepted] and len(outcome.accepted) == 5
    while outcome.remaining:
        outcome = tick(home, max_jobs=5)
    assert os.listdir(home.inbox) == [] and len(os.listdir(home.quarantine)) == 300


def test_a_tick_keeps_to_its_deadline_and_still_decides_however_full_the_inbox(home, monkeypatch):
    agent = make_agent(home, rate_per_minute=1000)
    ids = [drop_good_job(home, agent, NOW, job_id=f"job-{index:02d}") for index in range(30)]
    real_read = inbox_module._manifest_and_agent

    def slow_read(folder):
        time.sleep(0.02)
        return real_read(folder)

    monkeypatch.setattr(inbox_module, "_manifest_and_agent", slow_read)
    taken, seconds = [], []
    while len(taken) < len(ids):
        started = time.monotonic()
        outcome = tick(home, max_seconds=0.2)
        seconds.append(time.monotonic() - started)
        assert outcome.accepted and outcome.remaining == len(ids) - len(taken) - len(outcome.accepted)
        taken += [job.job_id for job in outcome.accepted]
    assert sorted(taken) == ids and len(seconds) > 1 and max(seconds) < 1.0


def test_a_deferral_does_not_outlive_its_entry(home, tmp_path):
    agent = make_agent(home, rate_per_minute=1)
    drop_good_job(home, agent, NOW, job_id="first")
    waiting = drop_good_job(home, agent, NOW, job_id="second")
    copy = drop_good_job(home, agent, NOW, job_id="third")
    assert [deferral.entry for deferral in tick(home).deferred] == [waiting, copy]
    shutil.move(home.inbox / waiting, tmp_path / waiting)
    shutil.copytree(home.inbox / copy, tmp_path / copy)
    shutil.rmtree(home.inbox / copy)
    tick(home, NOW + timedelta(minutes=1))
    shutil.move(tmp_path / copy, home.inbox / copy)
    shutil.move(tmp_path / waiting, home.inbox / waiting)

    outcome = tick(home, NOW + timedelta(days=2))

    assert outcome.accepted == []
    assert {rejection.entry: rejection.code for rejection in outcome.rejected} == {waiting: "stale", copy: "stale"}


def test_a_redropped_copy_starts_a_new_deferral_even_between_ticks(home, tmp_path):
    agent = make_agent(home, rate_per_minute=1)
    drop_good_job(home, agent, NOW, job_id="first")
    waiting = drop_good_job(home, agent, NOW, job_id="second")
    tick(home)
    shutil.copytree(home.inbox / waiting, tmp_path / waiting)
    shutil.rmtree(home.inbox / waiting)
    shutil.move(tmp_path / waiting, home.inbox / waiting)
    [rejection] = tick(home, NOW + timedelta(days=2)).rejected
    assert rejection.code == "stale"


def test_an_unsigned_drop_never_writes_a_status_under_a_job_id(home):
    victim = make_agent(home, "victim")
    make_agent(home, "attacker")
    forged = signed_manifest(victim, "victim-job", {"a.png": png_bytes()}, NOW, secret="0" * 64)
    drop_folder(home, "victim-job", forged, {"a.png": png_bytes()})
    [rejection] = tick(home).rejected
    assert rejection.code == "bad_signature" and read_status(home, "victim-job") is None
    drop_good_job(home, victim, NOW, job_id="victim-job")
    assert read_status(home, "victim-job") is None
    assert [job.job_id for job in tick(home).accepted] == ["victim-job"]
    assert read_status(home, "victim-job")["state"] == "queued"


def test_a_half_written_job_waits_while_young_and_is_rejected_when_old(home):
    agent = make_agent(home)
    image = png_bytes()
    manifest = json.dumps(signed_manifest(agent, "slow", {"a.png": image}, NOW)).encode()
    drop_folder(home, "slow", manifest[:40], {"a.png": image})
    missing = signed_manifest(agent, "late-image", {"a.png": image}, NOW)
    drop_folder(home, "late-image", missing, {})
    drop_folder(home, "abandoned", manifest[:40], {"a.png": image})
    age_entries(home.inbox, ["abandoned"])

    first = tick(home)
    assert [rejection.entry for rejection in first.rejected] == ["abandoned"] and first.deferred == []
    assert sorted(os.listdir(home.inbox)) == ["late-image", "slow"]
    (home.inbox / "slow" / "job.json").write_bytes(manifest)
    (home.inbox / "late-image" / "a.png").write_bytes(image)
    second = tick(home)
    assert sorted(job.job_id for job in second.accepted) == ["late-image", "slow"]
    assert [line["entry"] for line in read_audit(home.audit_log)] == ["abandoned", "late-image", "slow"]


def test_only_decides_just_the_named_entries_at_once(home):
    agent = make_agent(home)
    first = drop_good_job(home, agent, NOW, job_id="api-job")
    other = drop_good_job(home, agent, NOW, job_id="folder-job")
    drop_folder(home, "api-bad", b'{"version": 1, ', {})
    outcome = tick(home, only=[first, "api-bad"])
    assert [job.job_id for job in outcome.accepted] == [first] and os.listdir(home.inbox) == [other]
    assert [(rejection.entry, rejection.code) for rejection in outcome.rejected] == [("api-bad", "bad_json")]


class Crash(BaseException):
    """A kill: nothing after it runs in this process."""


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def ledger_full(*args, **kwargs):
    raise sqlite3.OperationalError("database or disk is full")


def crash(*args, **kwargs):
    raise Crash()


WRITES = {
    "decision": (IntakeLedger, "add_pending", ledger_full),
    "audit": (inbox_module, "append_audit", enospc),
    "audited-mark": (IntakeLedger, "mark_audited", ledger_full),
    "move": (inbox_module, "_move", enospc),
    "reason": (inbox_module, "write_json_atomic", enospc),
    "status-queued": (inbox_module, "write_queued", enospc),
    "status-rejected": (inbox_module, "write_rejected", enospc),
    "image-log": (IntakeLedger, "log_images", ledger_full),
}


def mixed_drops(home, agent_id, prefix=""):
    """Good jobs, a signed rejection, an unsigned one, a stray with a hostile name and a rate deferral."""
    agent = make_agent(home, agent_id, formats=("stl",), rate_per_minute=2)
    good = [drop_good_job(home, agent, NOW, job_id=f"{prefix}good-{index}") for index in range(2)]
    deferred = drop_good_job(home, agent, NOW, job_id=f"{prefix}later")
    drop_good_job(home, agent, NOW, job_id=f"{prefix}glb-job", formats=("glb",))
    drop_folder(home, f"{prefix}unsigned", b"{}", {})
    stray = os.fsdecode(os.fsencode(prefix) + os.fsencode(BAD_NAME))
    (home.inbox / stray).write_text("stray")
    age_entries(home.inbox, [f"{prefix}unsigned", stray])
    return good, deferred


@pytest.mark.parametrize("at_call", [1, 2])
@pytest.mark.parametrize("failure", ["full disk", "kill"])
@pytest.mark.parametrize("write", sorted(WRITES))
def test_a_full_disk_or_a_kill_at_any_write_loses_nothing_and_the_next_tick_finishes(
    home, monkeypatch, write, failure, at_call
):
    """The fault hits the first or second call of one write, in the first tick or (with new drops) the next."""
    good, deferred = mixed_drops(home, "agent-a")
    before = snapshot(home)
    owner, name, fault = WRITES[write]
    real = getattr(owner, name)
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == at_call:
            (crash if failure == "kill" else fault)()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)
    with pytest.raises(Crash if failure == "kill" else IntakeUnavailable) as caught:
        tick(home)
        more = snapshot(home)
        more_good, more_deferred = mixed_drops(home, "agent-b", "b-")
        before.update({key: value for key, value in snapshot(home).items() if key not in more})
        good, deferred = good + more_good, [deferred, more_deferred]
        tick(home)
    if failure == "full disk":
        assert "\n" not in str(caught.value) and "next tick finishes it" in str(caught.value)
    monkeypatch.undo()

    tick(home)
    tick(home, NOW + timedelta(seconds=1))

    assert_accounted(home, before)
    deferred = deferred if isinstance(deferred, list) else [deferred]
    assert sorted(os.listdir(home.jobs)) == sorted(good) and sorted(os.listdir(home.inbox)) == sorted(deferred)
    assert all(read_status(home, job_id)["state"] == "queued" for job_id in good + deferred)
    agents = len(deferred)
    assert all(read_status(home, f"{prefix}glb-job")["state"] == "rejected" for prefix in ["", "b-"][:agents])
    assert read_status(home, "unsigned") is None
    decisions = Counter(line["decision"] for line in read_audit(home.audit_log))
    assert decisions == {"accepted": 2 * agents, "rejected": 3 * agents, "deferred": agents}
    with IntakeLedger(home.state / "intake.sqlite") as ledger:
        logged = [image.job_id for image in ledger.images_after(0, 10)]
        assert sorted(logged) == sorted(good) and ledger.pending() == []


def test_an_entry_the_system_will_not_let_us_move_waits_without_stopping_the_others(home, monkeypatch):
    agent = make_agent(home)
    stuck = drop_good_job(home, agent, NOW, job_id="a-read-only")
    (home.inbox / "b-stray").write_text("x")
    others = [drop_good_job(home, agent, NOW, job_id=f"c-good-{index}") for index in range(2)]
    before = snapshot(home)
    real_move = inbox_module._move

    def refuse(source, target):
        if os.fsdecode(source).endswith(stuck):
            raise PermissionError(errno.EACCES, "Permission denied")
        real_move(source, target)

    monkeypatch.setattr(inbox_module, "_move", refuse)
    first = tick(home)
    again = tick(home, NOW + timedelta(seconds=15))
    assert sorted(job.job_id for job in first.accepted) == sorted([stuck, *others])
    assert sorted(os.listdir(home.jobs)) == sorted(others) and sorted(os.listdir(home.inbox)) == [stuck]
    assert again.accepted == again.rejected == [] and "Permission denied" in again.deferred[0].reason
    with IntakeLedger(home.state / "intake.sqlite") as ledger:
        assert stuck not in [image.job_id for image in ledger.images_after(0, 10)], "no run takes it yet"
    monkeypatch.undo()

    tick(home, NOW + timedelta(seconds=30))
    assert sorted(os.listdir(home.jobs)) == sorted([stuck, *others]) and read_status(home, stuck)["state"] == "queued"
    assert_accounted(home, before)
    assert len(read_audit(home.audit_log)) == 4


def _tick_in_child(root: str) -> list[str]:
    from orfeas_pipelines.lib.home import OrfeasHome

    return [job.job_id for job in tick(OrfeasHome.at(root), max_jobs=4).accepted]


def test_concurrent_ticks_decide_each_entry_once(home):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    agent = make_agent(home, rate_per_minute=1000)
    ids = [drop_good_job(home, agent, NOW, job_id=f"job-{index:02d}") for index in range(12)]
    (home.inbox / "stray").write_text("x")
    before = snapshot(home)
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
        taken = [job for result in pool.map(_tick_in_child, [str(home.root)] * 4) for job in result]
    assert sorted(taken) == ids
    assert_accounted(home, before)
    assert len(read_audit(home.audit_log)) == 13

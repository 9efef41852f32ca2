import os

from orfeas_pipelines.lib.intake.audit import append_audit, describe_entry, last_audited_seq, read_audit


def test_a_line_cut_short_by_a_full_disk_is_trimmed_and_the_seq_resumes_after_the_last_whole_line(tmp_path):
    log = tmp_path / "audit.log"
    assert last_audited_seq(log) == 0
    append_audit(log, [{"decision": "accepted", "seq": 1}, {"decision": "rejected", "seq": 2}])
    with open(log, "ab") as handle:
        handle.write(b'{"decision": "rejected", "se')
    assert last_audited_seq(log) == 2
    append_audit(log, [{"decision": "rejected", "seq": 3}])
    assert [line["seq"] for line in read_audit(log)] == [1, 2, 3]


def test_the_last_seq_is_found_in_a_long_log(tmp_path):
    log = tmp_path / "audit.log"
    append_audit(log, [{"decision": "accepted", "seq": seq, "message": "x" * 200} for seq in range(1, 2001)])
    assert last_audited_seq(log) == 2000


def test_any_name_is_recorded_printably_and_exactly():
    assert describe_entry("job-1") == {"entry": "job-1"}
    assert describe_entry("café") == {"entry": "café"}
    raw = b"bad\xff\nname"
    assert describe_entry(os.fsdecode(raw)) == {"entry": "bad\\xff\\x0aname", "entry_hex": raw.hex()}

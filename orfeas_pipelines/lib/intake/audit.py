"""`audit.log`: one JSON line per intake decision (accepted, rejected, deferred).

A tick's lines are appended with a single open, write and fsync, so a tick costs one file
operation however many jobs it decides. Lines carry ids, codes and messages, never secrets.
Each line has the `seq` of its decision in the intake journal, so a tick that died after
writing lines but before noting it never writes them twice, and a line cut short by a full
disk is trimmed before the next append (it was never a whole record).

An entry name is recorded as `entry` (printable; undecodable bytes shown as \\xNN) and, when
that is not the name itself, `entry_hex` (the exact bytes), so any name a file system can
hold is recorded faithfully.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

DECISIONS = ("accepted", "rejected", "deferred")


def utc_timestamp(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and a `Z`, the form every intake record uses."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def audit_record(at: datetime, decision: str, entry: str, **fields: Any) -> dict[str, Any]:
    """One decision; fields that are None are left out."""
    if decision not in DECISIONS:
        raise ValueError(f"unknown audit decision {decision!r}")
    record = {"at": utc_timestamp(at), "decision": decision, "entry": entry}
    record.update((key, value) for key, value in fields.items() if value is not None)
    return record


def describe_entry(name: str) -> dict[str, str]:
    """`entry` as printable text, plus `entry_hex` (the raw bytes) when that text is not the name."""
    if name.isprintable():  # the common case; an undecodable byte (a surrogate) is not printable
        return {"entry": name}
    raw = os.fsencode(name)
    text = raw.decode("utf-8", "backslashreplace")
    printable = "".join(char if char.isprintable() else f"\\x{ord(char):02x}" for char in text)
    return {"entry": printable} if printable == name else {"entry": printable, "entry_hex": raw.hex()}


def append_audit(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append the records as JSON lines in one write, durable (fsync) before it returns."""
    text = "".join(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n" for record in records)
    if not text:
        return
    with open(path, "a+b") as handle:
        _trim_partial_line(handle)
        handle.write(text.encode("utf-8", "backslashreplace"))  # a stray surrogate never blocks the log
        handle.flush()
        os.fsync(handle.fileno())


def last_audited_seq(path: Path) -> int:
    """The `seq` of the last whole line in the log (0 if none carries one)."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 65536))
            tail = handle.read()
    except FileNotFoundError:
        return 0
    for line in reversed(tail.split(b"\n")[1:-1] if size > 65536 else tail.split(b"\n")[:-1]):
        try:
            return int(json.loads(line).get("seq", 0))
        except ValueError:
            continue
    return 0


def _trim_partial_line(handle) -> None:
    """Cut a last line that a full disk left without its newline."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return
    start = max(0, size - 1024 * 1024)
    handle.seek(start)
    tail = handle.read()
    cut = tail.rfind(b"\n")
    handle.truncate(start + cut + 1 if cut >= 0 else start)
    handle.seek(0, os.SEEK_END)


def read_audit(path: Path) -> list[dict[str, Any]]:
    """All records so far (empty when there is no log yet)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]

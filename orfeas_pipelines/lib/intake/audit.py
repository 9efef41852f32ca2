"""`audit.log`: one JSON line per intake decision (accepted, rejected, deferred).

A tick's lines are appended with a single open and write, so a tick costs one file
operation however many jobs it decides. Lines carry ids, codes and messages, never secrets.
"""

from __future__ import annotations

import json
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


def append_audit(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append the records as JSON lines in one write."""
    text = "".join(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n" for record in records)
    if text:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(text)


def read_audit(path: Path) -> list[dict[str, Any]]:
    """All records so far (empty when there is no log yet)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]

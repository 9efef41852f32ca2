"""The home folder layout (`$ORFEAS_HOME`) that agents, the CLI and the Dagster layer share."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def default_home() -> Path:
    """`$ORFEAS_HOME`, else `./orfeas_data`."""
    return Path(os.environ.get("ORFEAS_HOME") or "orfeas_data").resolve()


@dataclass(frozen=True)
class OrfeasHome:
    root: Path

    @classmethod
    def at(cls, root: str | Path | None = None) -> "OrfeasHome":
        return cls(Path(root).resolve() if root else default_home())

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def meshes(self) -> Path:
        """Generated meshes by partition, written by the mesh asset (internal, not contract)."""
        return self.root / "meshes"

    @property
    def state(self) -> Path:
        """Intake state that must survive restarts: seen nonces and job ids, rate windows."""
        return self.root / "state"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    @property
    def agents_file(self) -> Path:
        return self.root / "agents.json"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    def ensure(self) -> "OrfeasHome":
        """Create the folders; idempotent."""
        for folder in (self.inbox, self.jobs, self.quarantine, self.outbox, self.meshes, self.state):
            folder.mkdir(parents=True, exist_ok=True)
        return self


def write_bytes_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write through a temp file in the same folder and rename, so readers never see half.

    The file gets `mode` when one is given (secrets pass 0o600; the temp file is 0600 from
    the start, so a secret is never readable by others), else the permissions any new file
    gets: 0666 less the process umask, 0644 under the usual 022.
    """
    tmp = write_staged(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_staged(path: Path, data: bytes, mode: int | None = None) -> Path:
    """`data` in a hidden temp file beside `path` (same folder, so `os.replace` onto `path` is
    atomic); returns the temp file, which the caller renames or removes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o666 if mode is None else 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_json_atomic(path: Path, payload: Any, mode: int | None = None) -> None:
    """Pretty, key-sorted JSON written atomically."""
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode("utf-8"), mode)

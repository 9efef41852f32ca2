"""The agent side: write a signed job into `inbox/` the way the contract asks every agent to.

The job is assembled in `inbox/.<job_id>.tmp/` (hidden, so the intake ignores it), job.json
is written last, and the folder is renamed to `inbox/<job_id>/` in one step: the intake
never sees half a job.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from orfeas_pipelines.lib.home import OrfeasHome
from orfeas_pipelines.lib.intake.manifest import IntakeError, format_timestamp, is_valid_id, parse_manifest
from orfeas_pipelines.lib.intake.signing import sign
from orfeas_pipelines.lib.intake.verify import MANIFEST_NAME


class SubmitError(ValueError):
    """A job that cannot be submitted; one line naming the thing and the reason."""


def new_job_id(now: datetime) -> str:
    """Time-ordered and unique: UTC timestamp with microseconds plus 32 random bits."""
    return f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%S.%fZ}-{secrets.token_hex(4)}"


def build_manifest(
    job_id: str,
    agent_id: str,
    images: Sequence[tuple[str, str]],
    secret: str,
    formats: Iterable[str],
    resolution: int,
    seed: int,
    created_at: datetime,
    nonce: str | None = None,
    size_mm: float | None = None,
) -> dict:
    """A signed manifest v1 for `images` given as (file name, sha256 hex) pairs; `size_mm`
    is left out unless given, so the job gets the default (100)."""
    manifest = {
        "version": 1,
        "job_id": job_id,
        "agent_id": agent_id,
        "created_at": format_timestamp(created_at),
        "nonce": nonce or secrets.token_hex(16),
        "images": [{"file": file, "sha256": digest} for file, digest in images],
        "output": {"formats": list(formats)},
        "params": {"resolution": resolution, "seed": seed},
    }
    if size_mm is not None:
        manifest["params"]["size_mm"] = size_mm
    manifest["signature"] = sign(manifest, secret)
    return manifest


def write_job(
    home: OrfeasHome,
    image_paths: Sequence[str | Path],
    agent_id: str,
    secret: str,
    formats: Iterable[str] = ("stl",),
    resolution: int = 128,
    seed: int = 0,
    job_id: str | None = None,
    now: datetime | None = None,
    size_mm: float | None = None,
) -> str:
    """Copy the images and a signed job.json into inbox/ atomically; returns the job id."""
    now = now or datetime.now(timezone.utc)
    job_id = job_id or new_job_id(now)
    paths = [Path(path) for path in image_paths]
    if not paths:
        raise SubmitError("no images given: a job needs at least one")
    names = [path.name for path in paths]
    for name in names:
        if not is_valid_id(name):
            raise SubmitError(
                f"image file name {name!r} is not allowed: use A-Z a-z 0-9 . _ - starting with a letter or digit"
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise SubmitError(f"image file names must be distinct within a job: {', '.join(duplicates)} given twice")
    contents = [_read(path) for path in paths]
    entries = [(name, hashlib.sha256(data).hexdigest()) for name, data in zip(names, contents)]
    manifest = build_manifest(job_id, agent_id, entries, secret, formats, resolution, seed, now, size_mm=size_mm)
    raw = json.dumps(manifest, indent=2).encode("utf-8")
    try:
        parse_manifest(raw)
    except IntakeError as error:
        raise SubmitError(error.message) from None

    home.inbox.mkdir(parents=True, exist_ok=True)
    final = home.inbox / job_id
    if os.path.lexists(final) or os.path.lexists(home.jobs / job_id):
        raise SubmitError(f"job id {job_id} is already in use")
    staging = home.inbox / f".{job_id}.tmp"
    try:
        staging.mkdir()
    except FileExistsError:
        raise SubmitError(f"job id {job_id} is already being written ({staging} exists)") from None
    try:
        for name, data in zip(names, contents):
            (staging / name).write_bytes(data)
        (staging / MANIFEST_NAME).write_bytes(raw)
        os.rename(staging, final)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise SubmitError(f"job {job_id} cannot be written into {home.inbox} ({error.strerror or error})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return job_id


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise SubmitError(f"{path}: cannot be read ({error.strerror or error})") from None

"""Checks of one job folder, in the fixed order of the contract; each failure is an IntakeError.

Order: manifest (size, JSON, version, schema) → agent known → signature → time window →
replay → permissions (formats, resolution, image count) → each image (plain name, no
symlink, regular file, size, sha256, full decode). The rate limit comes last and only
defers, so it lives with the inbox loop.

Files are opened relative to the job folder's descriptor with O_NOFOLLOW, so a symlink or a
path outside the folder is refused by the kernel, not by string checks alone; O_NONBLOCK
keeps a FIFO from hanging the tick.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import BinaryIO, Iterator

from orfeas_pipelines.lib.images import ImageError, verify_image
from orfeas_pipelines.lib.intake.decoding import DecodeWorker
from orfeas_pipelines.lib.intake.ledger import ImageFacts, IntakeLedger
from orfeas_pipelines.lib.intake.manifest import (
    MAX_MANIFEST_BYTES,
    ImageEntry,
    IntakeError,
    JobManifest,
    is_valid_id,
    parse_manifest,
)
from orfeas_pipelines.lib.intake.registry import AgentPolicy, AgentRegistry
from orfeas_pipelines.lib.intake.signing import signature_matches

MANIFEST_NAME = "job.json"
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
ACCEPTED_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
"""The only Pillow decoders an agent's bytes reach (checked by magic bytes first, for a clear error)."""


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits applied before and during decoding.

    The decode budgets apply to images decoded in a DecodeWorker (those over
    IN_PROCESS_DECODE_COST): a legitimate 4096x4096 image decodes in under half a second.
    """

    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    decode_cpu_seconds: float = 2.0
    decode_wall_seconds: float = 6.0


@dataclass(frozen=True)
class VerifiedJob:
    """A job that passed every check but the rate limit, with what intake learnt of its images."""

    manifest: JobManifest
    policy: AgentPolicy
    images: tuple[ImageFacts, ...]


def read_manifest(folder: Path) -> bytes:
    """The raw job.json of a job folder; FileNotFoundError when it is not written yet."""
    try:
        fd = os.open(folder / MANIFEST_NAME, _OPEN_FLAGS)
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise FileNotFoundError(str(folder / MANIFEST_NAME)) from None
        if error.errno == errno.ELOOP:
            raise IntakeError("path_not_allowed", "job.json is a symlink") from None
        raise IntakeError("not_a_job", f"job.json cannot be read ({error.strerror})") from None
    with _regular_file(fd, IntakeError("not_a_job", "job.json is not a regular file")) as (handle, info):
        if info.st_size > MAX_MANIFEST_BYTES:
            raise IntakeError("too_large", f"job.json is {info.st_size} bytes, over the limit of {MAX_MANIFEST_BYTES}")
        return _read_bounded(handle, info.st_size, MAX_MANIFEST_BYTES)


def verify_job(
    folder: Path,
    raw: bytes,
    registry: AgentRegistry,
    ledger: IntakeLedger,
    jobs_dir: Path,
    judged_at_epoch: float,
    window_seconds: float,
    limits: ImageLimits,
    manifest: JobManifest | None = None,
    decoder: DecodeWorker | None = None,
) -> VerifiedJob:
    """Every check except the rate limit.

    `judged_at_epoch` is the time the job counts as arrived (now, or when it was first
    deferred). Pass `manifest` when the caller already parsed `raw`. An IntakeError raised
    after the signature matched has `signed` set: only such an error may speak for the job id.
    With `decoder`, costly images are decoded there under `limits`' decode budgets (else all
    in this process); DecodeBusy means the machine was too busy to finish one: retry later.
    """
    if manifest is None:
        manifest = parse_manifest(raw)
    job_id, agent_id = manifest.job_id, manifest.agent_id
    if folder.name != job_id:
        raise IntakeError("bad_manifest", f"folder {folder.name!r} does not match job_id {job_id}", job_id, agent_id)
    policy = registry.get(agent_id)
    if policy is None:
        raise IntakeError("unknown_agent", f"agent {agent_id} is not in the key registry", job_id, agent_id)
    if not signature_matches(manifest.signed_fields(), manifest.signature, policy.secret):
        raise IntakeError("bad_signature", f"signature does not match agent {agent_id}'s key", job_id, agent_id)
    try:
        _check_time_window(manifest, judged_at_epoch, window_seconds)
        if ledger.nonce_seen(agent_id, manifest.nonce):
            raise IntakeError("replay", f"nonce was already used by agent {agent_id}", job_id, agent_id)
        if ledger.job_seen(job_id) or os.path.lexists(jobs_dir / job_id):
            raise IntakeError("replay", f"job id {job_id} was already used", job_id, agent_id)
    except IntakeError as error:
        raise IntakeError(error.code, error.message, job_id, agent_id, signed=True) from None
    try:
        _check_permissions(manifest, policy)
        images = _check_images(folder, manifest.images, limits, decoder)
    except IntakeError as error:
        raise IntakeError(error.code, error.message, job_id, agent_id, authentic=True, signed=True) from None
    return VerifiedJob(manifest, policy, images)


def _check_time_window(manifest: JobManifest, judged_at_epoch: float, window_seconds: float) -> None:
    age = judged_at_epoch - manifest.created.timestamp()
    window = timedelta(seconds=window_seconds)
    if age > window_seconds:
        raise IntakeError(
            "stale",
            f"created_at {manifest.created_at} is {timedelta(seconds=int(age))} old, over the window of {window}",
            manifest.job_id,
            manifest.agent_id,
        )
    if -age > window_seconds:
        raise IntakeError(
            "future",
            f"created_at {manifest.created_at} is {timedelta(seconds=int(-age))} in the future, "
            f"over the window of {window}",
            manifest.job_id,
            manifest.agent_id,
        )


def _check_permissions(manifest: JobManifest, policy: AgentPolicy) -> None:
    refused = [fmt for fmt in manifest.output.formats if fmt not in policy.formats]
    if refused:
        raise IntakeError(
            "format_not_allowed",
            f"agent {policy.agent_id} may not request {', '.join(refused)} (allowed: {', '.join(policy.formats)})",
        )
    if manifest.params.resolution > policy.max_resolution:
        raise IntakeError(
            "resolution_not_allowed",
            f"resolution {manifest.params.resolution} is over agent {policy.agent_id}'s limit "
            f"of {policy.max_resolution}",
        )
    if len(manifest.images) > policy.max_images:
        raise IntakeError(
            "too_many_images",
            f"{len(manifest.images)} images is over agent {policy.agent_id}'s limit of {policy.max_images} per job",
        )


def _check_images(
    folder: Path, images: list[ImageEntry], limits: ImageLimits, decoder: DecodeWorker | None
) -> tuple[ImageFacts, ...]:
    try:
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as error:
        raise IntakeError("image_missing", f"job folder cannot be read ({error.strerror})") from None
    try:
        return tuple(_check_image(folder_fd, image, limits, decoder) for image in images)
    finally:
        os.close(folder_fd)


def _check_image(folder_fd: int, image: ImageEntry, limits: ImageLimits, decoder: DecodeWorker | None) -> ImageFacts:
    name = image.file
    if not is_valid_id(name) or name == MANIFEST_NAME:
        raise IntakeError(
            "path_not_allowed",
            f"image {_quote(name)} is not a plain file name inside the job folder (A-Z a-z 0-9 . _ -)",
        )
    data = read_image_at(folder_fd, name, limits.max_bytes)
    digest = hashlib.sha256(data).hexdigest()
    if digest != image.sha256.lower():
        raise IntakeError("hash_mismatch", f"image {name}: sha256 does not match the manifest")
    try:
        width, height = check_image_policy(data, name, limits, decoder)
    except ImageError as error:
        raise IntakeError(error.code, f"image {error}") from None
    return ImageFacts(name, digest, len(data), width, height)


def check_image_policy(
    data: bytes, name: str, limits: ImageLimits, decoder: DecodeWorker | None = None
) -> tuple[int, int]:
    """Intake's format and size policy on an image's bytes, fully decoded; returns (width, height).

    With `decoder`, a costly image is decoded there, under `limits`' decode budgets.
    """
    require_accepted_format(data, name)
    offload = None
    if decoder is not None:
        offload = partial(
            decoder.verify, data, name, limits.max_pixels, limits.max_bytes, ACCEPTED_IMAGE_FORMATS,
            limits.decode_cpu_seconds, limits.decode_wall_seconds,
        )
    return verify_image(data, name, limits.max_pixels, limits.max_bytes, ACCEPTED_IMAGE_FORMATS, offload)


def read_image_at(folder_fd: int, name: str, max_bytes: int) -> bytes:
    """An image's bytes, opened without following symlinks and read at most once past `max_bytes`."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=folder_fd)
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise IntakeError("image_missing", f"image {name} is listed but not in the job folder") from None
        if error.errno == errno.ELOOP:
            raise IntakeError("path_not_allowed", f"image {name} is a symlink") from None
        raise IntakeError("image_missing", f"image {name} cannot be read ({error.strerror})") from None
    with _regular_file(fd, IntakeError("path_not_allowed", f"image {name} is not a regular file")) as (handle, info):
        if info.st_size > max_bytes:
            raise IntakeError("too_large", f"image {name} is {info.st_size} bytes, over the limit of {max_bytes}")
        data = _read_bounded(handle, info.st_size, max_bytes)
    if len(data) > max_bytes:
        raise IntakeError("too_large", f"image {name} grew past the limit of {max_bytes} bytes while being read")
    return data


@contextmanager
def _regular_file(fd: int, not_regular: IntakeError) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """The open file and its stat; anything but a regular file (a directory, a FIFO) is `not_regular`.

    Checked before Python wraps the descriptor, which would raise IsADirectoryError itself.
    """
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise not_regular
    with os.fdopen(fd, "rb") as handle:
        yield handle, info


def _read_bounded(handle: BinaryIO, expected_size: int, limit: int) -> bytes:
    """Read a file whose size fstat gave, without allocating `limit` bytes up front.

    A file still growing reads on, up to limit + 1 bytes, so the caller can refuse it.
    """
    data = handle.read(expected_size + 1)
    if len(data) > expected_size:
        data += handle.read(limit + 1 - len(data))
    return data


def require_accepted_format(data: bytes, name: str) -> None:
    """PNG, JPEG and WebP only, by magic bytes, so Pillow never reaches riskier decoders (EPS...)."""
    if not (data.startswith(_IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")):
        raise ImageError(name, "not a PNG, JPEG or WebP file")


def _quote(name: str) -> str:
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."

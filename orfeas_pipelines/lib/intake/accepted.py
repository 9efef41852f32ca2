"""The run's side of intake: mesh only the bytes intake verified.

`jobs/<job_id>/` is the agent's own folder, renamed: an agent that kept a hard link, an open
handle or a descriptor of the folder can still rewrite an image after acceptance. So a run
never trusts the file: it reads the image once, checks that those bytes hash to the sha256
intake stored in the ledger (or, for images logged before the ledger kept hashes, the one in
the job's manifest, whose signature is checked again), applies intake's format and size
policy to the same bytes and decodes them. Any mismatch fails that image with an ImageError.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from orfeas_pipelines.lib.home import OrfeasHome
from orfeas_pipelines.lib.images import ImageError, decode_image
from orfeas_pipelines.lib.intake.ledger import IntakeLedger, open_ledger
from orfeas_pipelines.lib.intake.manifest import IntakeError, is_valid_id, parse_manifest
from orfeas_pipelines.lib.intake.registry import AgentRegistry, RegistryError
from orfeas_pipelines.lib.intake.signing import signature_matches
from orfeas_pipelines.lib.intake.verify import (
    ACCEPTED_IMAGE_FORMATS,
    MANIFEST_NAME,
    ImageLimits,
    read_image_at,
    require_accepted_format,
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def load_accepted_image(
    home: OrfeasHome, partition_key: str, ledger: IntakeLedger | None = None, limits: ImageLimits = ImageLimits()
) -> np.ndarray:
    """The accepted image `<job_id>/<file>` as RGBA uint8, from bytes matching what intake verified."""
    job_id, _, file = partition_key.partition("/")
    if not (is_valid_id(job_id) and is_valid_id(file)):
        raise ImageError(partition_key, "not an accepted image's partition key (<job_id>/<file>)", "image_missing")
    if ledger is None:
        with open_ledger(home) as own:
            expected = _expected_sha256(home, own, partition_key, job_id, file)
    else:
        expected = _expected_sha256(home, ledger, partition_key, job_id, file)
    data = _read(home.jobs / job_id, file, limits.max_bytes)
    if hashlib.sha256(data).hexdigest() != expected:
        raise ImageError(
            file, f"bytes changed after intake accepted job {job_id}: sha256 does not match the signed manifest",
            "hash_mismatch",
        )
    require_accepted_format(data, file)
    return decode_image(data, file, limits.max_pixels, limits.max_bytes, ACCEPTED_IMAGE_FORMATS)


def _expected_sha256(home: OrfeasHome, ledger: IntakeLedger, key: str, job_id: str, file: str) -> str:
    image = ledger.image(key)
    if image is None:
        raise ImageError(file, f"job {job_id} has no accepted image {file} in the intake ledger", "image_missing")
    if image.sha256:
        return image.sha256
    return _signed_sha256(home, job_id, file)


def _signed_sha256(home: OrfeasHome, job_id: str, file: str) -> str:
    """The image's hash from the job's manifest, trusted only if its signature still matches."""
    try:
        manifest = parse_manifest((home.jobs / job_id / MANIFEST_NAME).read_bytes())
        policy = AgentRegistry.load(home.agents_file).get(manifest.agent_id)
    except (OSError, IntakeError, RegistryError) as error:
        raise ImageError(file, f"job {job_id}'s manifest cannot be checked ({error})", "hash_mismatch") from None
    if policy is None or not signature_matches(manifest.signed_fields(), manifest.signature, policy.secret):
        raise ImageError(file, f"job {job_id}'s manifest no longer carries a valid signature", "bad_signature")
    digest = next((image.sha256.lower() for image in manifest.images if image.file == file), None)
    if digest is None:
        raise ImageError(file, f"job {job_id}'s manifest does not list {file}", "image_missing")
    return digest


def _read(folder: Path, file: str, max_bytes: int) -> bytes:
    try:
        folder_fd = os.open(folder, _DIR_FLAGS)
    except OSError as error:
        raise ImageError(file, f"job folder {folder.name} cannot be read ({error.strerror})", "image_missing") from None
    try:
        return read_image_at(folder_fd, file, max_bytes)
    except IntakeError as error:
        raise ImageError(file, error.message, error.code) from None
    finally:
        os.close(folder_fd)

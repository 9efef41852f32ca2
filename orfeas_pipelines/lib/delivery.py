"""From an accepted image to delivered files: the run's per-image work around the generator.

`load_requests` reads and decodes each image of a window once, with its job's parameters;
`prepare` turns one generation result into the job's files (`outbox/<job_id>/<stem>.<fmt>`
and `<stem>.png`) under temporary names, or a classified failure, and `publish` puts them in
place once the window passed its blocking check. Failures say whether a retry can fix them: an
image that is not an image, has no foreground or gives an invalid mesh fails the same way
every time; running out of memory alone or an I/O error may not.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orfeas_pipelines.lib.home import OrfeasHome, write_staged

if TYPE_CHECKING:
    from orfeas_pipelines.lib.generation.base import GenerationRequest, GenerationResult
    from orfeas_pipelines.lib.intake.manifest import JobManifest


@dataclass(frozen=True)
class Failure:
    """Why an image was not delivered: one line naming the image, a code, and whether to retry."""

    message: str
    code: str
    retryable: bool = False


@dataclass
class Delivery:
    """The outcome for one image: its files and facts, or a failure."""

    outputs: dict[str, str]
    metrics: dict[str, Any]
    quality: dict[str, Any] | None
    folder: Path
    failure: Failure | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    pictures: str = ""
    """Markdown with the input, the mask over it and the mesh preview as small inline images."""
    staged: dict[Path, Path] = field(default_factory=dict)
    """Prepared files not yet in place: temp file -> final path (see `publish`)."""


PREVIEW_FORMAT = "png"
"""The preview is always `<stem>.png` beside the meshes."""


def job_id_of(partition_key: str) -> str:
    return partition_key.split("/", 1)[0]


def file_of(partition_key: str) -> str:
    return partition_key.split("/", 1)[1]


def load_requests(home: OrfeasHome, keys: list[str]) -> tuple[list[GenerationRequest], dict[str, Failure]]:
    """Generation requests with each job's resolution and seed, each image read and decoded once.

    Only bytes that hash to what intake verified are decoded (`load_accepted_image`): an image
    rewritten after acceptance fails for good, a read that failed may succeed on retry.
    """
    from orfeas_pipelines.lib.generation.base import GenerationRequest
    from orfeas_pipelines.lib.images import ImageError
    from orfeas_pipelines.lib.intake.accepted import load_accepted_image
    from orfeas_pipelines.lib.intake.ledger import open_ledger

    requests, failures = [], {}
    with open_ledger(home) as ledger:
        for key in keys:
            try:
                params = job_manifest(home, job_id_of(key)).params
                image = load_accepted_image(home, key, ledger)
            except LookupError as error:
                failures[key] = Failure(f"{key}: {error}", "not_an_accepted_job")
            except ImageError as error:
                failures[key] = Failure(f"{key}: {error.reason}", error.code)
            except OSError as error:
                failures[key] = Failure(f"{key}: cannot be read ({error})", "io_error", retryable=True)
            else:
                requests.append(GenerationRequest(key=key, image=image, resolution=params.resolution, seed=params.seed))
    return requests, failures


def prepare(home: OrfeasHome, request: GenerationRequest, result: GenerationResult) -> Delivery:
    """All of a delivery but its last step, so it can run before the blocking check has
    judged the window: validates the mesh, writes the job's formats and the preview into
    hidden temp files beside their final names, and draws the pictures. `publish` renames
    the files into place; `discard` removes them. Anything not deliverable is classified.

    Either way the outcome carries the pictures a person needs to judge it: the input, the
    mask over it and, when there is one, the mesh.
    """
    from orfeas_pipelines.lib.export import encode_mesh
    from orfeas_pipelines.lib.meshes import FaceGeometry, inspect_mesh
    from orfeas_pipelines.lib.preview import png_bytes, render_preview_rgba

    _keep_freed_memory()
    key = request.key
    job_id, stem = job_id_of(key), Path(file_of(key)).stem
    folder = home.outbox / job_id
    quality = result.metrics.get("quality")
    metrics = {name: value for name, value in result.metrics.items() if name != "quality"}
    if not result.ok:
        failure = Failure(result.error or f"{key}: no mesh produced", "generation_failed", result.retryable)
        return Delivery({}, metrics, quality, folder, failure, pictures=pictures_markdown(request.image, result.mask))
    started = time.perf_counter()
    geometry = FaceGeometry.of(result.mesh)
    problems, facts = inspect_mesh(result.mesh, geometry)
    if problems:
        failure = Failure(f"{key}: {'; '.join(problems)}", "invalid_mesh")
        return Delivery({}, metrics, quality, folder, failure, pictures=pictures_markdown(request.image, result.mask))
    metrics.update(facts)
    validated = time.perf_counter()
    manifest = job_manifest(home, job_id)
    files = encode_mesh(result.mesh, manifest.output.formats, manifest.params.size_mm, geometry)
    encoded = time.perf_counter()
    preview = render_preview_rgba(result.mesh)
    files[PREVIEW_FORMAT] = png_bytes(preview)
    previewed = time.perf_counter()
    delivery = Delivery({fmt: f"{stem}.{fmt}" for fmt in files if fmt != PREVIEW_FORMAT}, metrics, quality, folder)
    try:
        finals = {fmt: folder / f"{stem}.{fmt}" for fmt in files}
        _remove_leftovers(folder, [final.name for final in finals.values()])
        for fmt, data in files.items():
            delivery.staged[write_staged(finals[fmt], data)] = finals[fmt]
    except OSError as error:
        discard(delivery)
        return Delivery({}, metrics, quality, folder, Failure(f"{key}: cannot write files ({error})", "io_error", True))
    staged = time.perf_counter()
    delivery.pictures = pictures_markdown(request.image, result.mask, preview)
    delivery.seconds = {
        "validate": validated - started,
        "export": encoded - validated + staged - previewed,
        "preview": previewed - encoded,
        "pictures": time.perf_counter() - staged,
    }
    return delivery


HEAP_TOP_PAD = 64 << 20
"""Bytes of freed memory glibc keeps at the top of the heap (see `_keep_freed_memory`)."""

_M_TOP_PAD = -2
"""glibc's `mallopt` parameter number for the top pad (malloc.h)."""


@lru_cache(maxsize=1)
def _keep_freed_memory() -> None:
    """Once per process, ask glibc to keep HEAP_TOP_PAD bytes of freed heap rather than give
    them back to the system. A delivery allocates and frees some 20 MB of arrays per mesh;
    given back, they return as fresh pages that the next mesh pays for one by one (about
    2 us a 4 KB page on this machine: 4 ms of CPU per 50k-face mesh). Without glibc's
    `mallopt` (macOS, musl) nothing changes."""
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(_M_TOP_PAD, HEAP_TOP_PAD)


def publish(key: str, delivery: Delivery) -> Delivery:
    """Rename a prepared delivery's files into place (each rename atomic); a failed rename
    removes what is left and returns the delivery as a retryable failure."""
    try:
        while delivery.staged:
            temporary, final = next(iter(delivery.staged.items()))
            os.replace(temporary, final)
            del delivery.staged[temporary]
    except OSError as error:
        discard(delivery)
        delivery.failure = Failure(f"{key}: cannot write files ({error})", "io_error", retryable=True)
    return delivery


def _remove_leftovers(folder: Path, names: list[str]) -> None:
    """Temp files of these file names that a killed run prepared and never published
    (`write_staged` names them `.<name>.<hex>.tmp`); the image is delivered again now, by one
    run. One listing of the folder serves every name."""
    prefixes = tuple(f".{name}." for name in names)
    try:
        with os.scandir(folder) as entries:
            leftovers = [entry.path for entry in entries if entry.name.startswith(prefixes) and entry.name.endswith(".tmp")]
    except FileNotFoundError:
        return
    for leftover in leftovers:
        Path(leftover).unlink(missing_ok=True)


def discard(delivery: Delivery) -> None:
    """Remove a prepared delivery's temp files (the blocking check failed, or a write did)."""
    for temporary in delivery.staged:
        temporary.unlink(missing_ok=True)
    delivery.staged.clear()


def pictures_markdown(image, mask, preview=None) -> str:
    """Input, mask over the input and mesh preview side by side, each a small inline PNG
    (the input shrunk once for both of its pictures)."""
    from orfeas_pipelines.lib.preview import mask_overlay_data_uri, thumbnail, thumbnail_data_uri

    picture = thumbnail(image)
    cells = [("input", thumbnail_data_uri(picture))]
    if mask is not None and mask.any():
        cells.append(("mask", mask_overlay_data_uri(picture, mask)))
    if preview is not None:
        cells.append(("mesh", thumbnail_data_uri(preview)))
    return " ".join(f"![{name}]({uri})" for name, uri in cells)


def job_manifest(home: OrfeasHome, job_id: str) -> JobManifest:
    """The accepted job's manifest; LookupError when `job_id` names no accepted job."""
    return _cached_manifest(home.jobs / job_id / "job.json")


@lru_cache(maxsize=4096)
def _cached_manifest(path: Path) -> JobManifest:
    """Accepted jobs are immutable, so their manifests can be cached per process."""
    from orfeas_pipelines.lib.intake.manifest import IntakeError, parse_manifest

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LookupError(f"not an accepted job (no {path.parent.name}/job.json in jobs/)") from None
    try:
        return parse_manifest(raw)
    except IntakeError as error:
        raise LookupError(f"not an accepted job ({error.message})") from None

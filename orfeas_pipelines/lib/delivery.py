"""From an accepted image to delivered files: the run's per-image work around the generator.

`load_requests` reads and decodes each image of a window once, with its job's parameters;
`deliver` turns one generation result into the job's files (`outbox/<job_id>/<stem>.<fmt>`
and `<stem>.png`) or a classified failure. Failures say whether a retry can fix them: an
image that is not an image, has no foreground or gives an invalid mesh fails the same way
every time; running out of memory alone or an I/O error may not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orfeas_pipelines.lib.home import OrfeasHome

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


def deliver(home: OrfeasHome, request: GenerationRequest, result: GenerationResult) -> Delivery:
    """Write the job's formats and a preview for a valid mesh; classify anything else.

    Either way the outcome carries the pictures a person needs to judge it: the input, the
    mask over it and, when there is one, the mesh.
    """
    from orfeas_pipelines.lib.export import export_mesh, render_preview
    from orfeas_pipelines.lib.meshes import inspect_mesh

    key = request.key
    job_id, stem = job_id_of(key), Path(file_of(key)).stem
    folder = home.outbox / job_id
    quality = result.metrics.get("quality")
    metrics = {name: value for name, value in result.metrics.items() if name != "quality"}
    if not result.ok:
        failure = Failure(result.error or f"{key}: no mesh produced", "generation_failed", result.retryable)
        return Delivery({}, metrics, quality, folder, failure, pictures=pictures_markdown(request.image, result.mask))
    started = time.perf_counter()
    problems, facts = inspect_mesh(result.mesh)
    if problems:
        failure = Failure(f"{key}: {'; '.join(problems)}", "invalid_mesh")
        return Delivery({}, metrics, quality, folder, failure, pictures=pictures_markdown(request.image, result.mask))
    metrics.update(facts)
    validated = time.perf_counter()
    manifest = job_manifest(home, job_id)
    try:
        files = export_mesh(result.mesh, folder, stem, manifest.output.formats, manifest.params.size_mm)
        exported = time.perf_counter()
        preview = render_preview(result.mesh, folder / f"{stem}.png")
    except OSError as error:
        return Delivery({}, metrics, quality, folder, Failure(f"{key}: cannot write files ({error})", "io_error", True))
    previewed = time.perf_counter()
    pictures = pictures_markdown(request.image, result.mask, preview)
    seconds = {
        "validate": validated - started,
        "export": exported - validated,
        "preview": previewed - exported,
        "pictures": time.perf_counter() - previewed,
    }
    outputs = {fmt: path.name for fmt, path in files.items()}
    return Delivery(outputs, metrics, quality, folder, seconds=seconds, pictures=pictures)


def deliver_all(home: OrfeasHome, requests: list[GenerationRequest], results: dict[str, GenerationResult]) -> dict[str, Delivery]:
    """`deliver` for every generated image, on all usable CPUs: the validation, encoding and
    rendering are numpy and zlib work that releases the GIL, so images go in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    from orfeas_pipelines.lib.batching import usable_cpus

    if not requests:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(requests), usable_cpus())) as pool:
        outcomes = pool.map(lambda request: deliver(home, request, results[request.key]), requests)
        return {request.key: outcome for request, outcome in zip(requests, outcomes)}


def pictures_markdown(image, mask, preview=None) -> str:
    """Input, mask over the input and mesh preview side by side, each a small inline PNG."""
    from orfeas_pipelines.lib.preview import mask_overlay_data_uri, thumbnail_data_uri

    cells = [("input", thumbnail_data_uri(image))]
    if mask is not None and mask.any():
        cells.append(("mask", mask_overlay_data_uri(image, mask)))
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

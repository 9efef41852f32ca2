"""Images in, meshes out: the three partitioned assets of the main job.

Every asset uses a single-run backfill policy, so one run covers a whole range of image
partitions and the mesh step hands them to the generator in batches. Data moves through
files in `$ORFEAS_HOME` (the accepted job, the stored mesh, the outbox), not IO managers:
the files are the product, and a range run writes one per partition.

Dagster copies a range run's asset-level metadata onto every partition it covers, so the
figures about the whole run (images, batches, throughput) are named `run_*`; per-image
facts (vertices, faces, state) are attached to their own partition.
"""


import hashlib
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import dagster as dg

from orfeas_pipelines.lib import outbox, store
from orfeas_pipelines.lib.home import OrfeasHome
from orfeas_pipelines.partitions import file_of, images_partitions, job_id_of
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.resources.inference import MeshGeneratorResource

# The single-run backfill policy is what makes range runs batched; its beta label is noise here.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)

MESH_CHECKS = [
    dg.AssetCheckSpec(
        "batch_matches_sequential",
        asset="generated_mesh",
        blocking=True,
        description="A sample of the batch, re-run one image at a time, gives the same meshes "
        "(Chamfer distance under the match threshold for more than 99% of the sample).",
    ),
    dg.AssetCheckSpec(
        "meshes_are_valid",
        asset="generated_mesh",
        description="Every mesh of the run is non-empty, watertight, finite and has no "
        "degenerate faces; images that failed to generate are listed.",
    ),
]


class MeshRunConfig(dg.Config):
    """How a range run walks its images, and how much the blocking check re-runs sequentially.

    A run holds at most `images_in_memory` decoded images and their meshes at a time, so a
    range of thousands of large photos needs no more memory than a few batches of them.
    """

    images_in_memory: int = 64
    sequential_sample_size: int = 8


@dg.asset(
    partitions_def=images_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    group_name="meshes",
    kinds={"image"},
)
def source_image(context: dg.AssetExecutionContext, orfeas_home: OrfeasHomeResource) -> None:
    """Each submitted image, decoded and validated, with its size and content hash.

    One partition per image, keyed `<job_id>/<file>`; the image lives in the immutable
    `jobs/<job_id>/` folder the intake sensor moved it to. Starting this step marks the
    jobs of the run as running in their outbox status.
    """
    from orfeas_pipelines.lib.images import ImageError, has_meaningful_alpha, load_image

    home = orfeas_home.home
    for job_id in sorted({job_id_of(key) for key in context.partition_keys}):
        try:
            outbox.mark_running(home, job_id, context.run.run_id)
        except LookupError as error:
            context.log.warning(f"{job_id}: not an accepted job, nothing to report to ({error})")
    unreadable = []
    for key in context.partition_keys:
        path = home.jobs / key
        try:
            image = load_image(path)
        except ImageError as error:
            unreadable.append(key)
            context.log.error(str(error))
            context.add_asset_metadata({"error": str(error)}, partition_key=key)
            continue
        context.add_asset_metadata(
            {
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "width": image.shape[1],
                "height": image.shape[0],
                "has_alpha": has_meaningful_alpha(image),
                "path": dg.MetadataValue.path(str(path)),
            },
            partition_key=key,
        )
    context.add_asset_metadata({"run_images": len(context.partition_keys), "run_unreadable": len(unreadable)})


@dg.asset(
    partitions_def=images_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[source_image],
    pool="gpu",
    check_specs=MESH_CHECKS,
    group_name="meshes",
    kinds={"pytorch"},
)
def generated_mesh(
    context: dg.AssetExecutionContext,
    config: MeshRunConfig,
    orfeas_home: OrfeasHomeResource,
    mesh_generator: MeshGeneratorResource,
) -> Iterator[dg.MaterializeResult]:
    """The 3D mesh of each image, generated in memory-sized batches on the inference device.

    One forward pass covers a batch of images; per-batch size, time, peak memory and device
    are recorded. The range is streamed: images are decoded, generated and stored a window
    at a time. A failed image is recorded as that partition's error and fails only itself.
    The blocking check re-runs a sample of the images that loaded, one at a time, and
    compares with the stored batched meshes.
    """
    from orfeas_pipelines.lib.compare import compare_batch_to_sequential

    if config.images_in_memory < 1:
        raise dg.Failure(f"images_in_memory must be at least 1, got {config.images_in_memory}")
    home = orfeas_home.home
    keys = list(context.partition_keys)
    generator = mesh_generator.generator
    batches, invalid, loaded = [], {}, []
    seconds = 0.0
    for window_start in range(0, len(keys), config.images_in_memory):
        window = keys[window_start : window_start + config.images_in_memory]
        window_loaded, window_seconds = _generate_window(context, home, mesh_generator, window, batches, invalid)
        loaded += window_loaded
        seconds += window_seconds

    sample = _evenly_spaced(loaded, config.sequential_sample_size)
    sample_requests, _ = _requests_for(home, sample)
    sequential = {result.key: result.mesh for result in mesh_generator.generate(sample_requests, batch_size=1)}
    agreement = compare_batch_to_sequential(
        {key: store.load_mesh(home, key) for key in sample}, {key: sequential.get(key) for key in sample}
    )
    yield dg.MaterializeResult(
        metadata={
            "backend": generator.name,
            "device": str(generator.device),
            "run_images": len(keys),
            "run_failed": len(invalid),
            "run_seconds": round(seconds, 3),
            "run_images_per_second": round(len(loaded) / seconds, 3) if seconds else 0.0,
            "run_batches": _batch_table(batches),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="batch_matches_sequential",
                passed=agreement.passed,
                metadata={
                    "matched": agreement.matched,
                    "compared": agreement.compared,
                    "fraction": agreement.fraction,
                    "distances": dg.MetadataValue.json(agreement.distances),
                },
            ),
            dg.AssetCheckResult(
                check_name="meshes_are_valid",
                passed=not invalid,
                metadata={"invalid": dg.MetadataValue.json(invalid), "checked": len(keys)},
            ),
        ],
    )


@dg.asset(
    partitions_def=images_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[generated_mesh],
    group_name="meshes",
    kinds={"file"},
)
def mesh_files(context: dg.AssetExecutionContext, orfeas_home: OrfeasHomeResource) -> None:
    """The requested formats and a PNG preview of each mesh, delivered to the job's outbox.

    Writes `outbox/<job_id>/<stem>.<fmt>` and `<stem>.png`, then records the image's final
    state (succeeded with its files, or failed with the reason) in the job's status.json.
    """
    from orfeas_pipelines.lib.export import export_mesh, render_preview

    home = orfeas_home.home
    delivered = 0
    for key in context.partition_keys:
        job_id, file = job_id_of(key), file_of(key)
        record = store.load_record(home, key) or {"error": "no generated mesh found"}
        mesh = store.load_mesh(home, key) if not record.get("error") else None
        if mesh is None:
            error = record.get("error") or "no generated mesh found"
            _report_image(context, home, key, "failed", error=error)
            continue
        folder = home.outbox / job_id
        stem = Path(file).stem
        try:
            files = export_mesh(mesh, folder, stem, _manifest(home, job_id).output.formats)
            render_preview(mesh, folder / f"{stem}.png")
        except Exception as error:  # noqa: BLE001 - one image's export failure fails only it
            message = f"{file}: export failed ({error})"
            _report_image(context, home, key, "failed", error=message)
            continue
        outputs = {fmt: path.name for fmt, path in files.items()}
        metrics = {name: record[name] for name in ("vertices", "faces", "watertight", "valid") if name in record}
        _report_image(context, home, key, "succeeded", outputs=outputs, metrics=metrics)
        context.add_asset_metadata({"folder": dg.MetadataValue.path(str(folder))}, partition_key=key)
        delivered += 1
    context.add_asset_metadata({"run_delivered": delivered, "run_images": len(context.partition_keys)})


def _generate_window(
    context: dg.AssetExecutionContext,
    home: OrfeasHome,
    mesh_generator: MeshGeneratorResource,
    window: list[str],
    batches: list,
    invalid: dict[str, str],
) -> tuple[list[str], float]:
    """Decode, generate and store one window of partitions; returns the keys whose image loaded
    and the generation time. The window's images and meshes are freed when it returns."""
    from orfeas_pipelines.lib.meshes import mesh_problems, mesh_summary

    generator = mesh_generator.generator
    requests, load_errors = _requests_for(home, window)
    started = time.perf_counter()
    results = {result.key: result for result in mesh_generator.generate(requests, on_batch=batches.append)}
    seconds = time.perf_counter() - started
    for key in window:
        result = results.get(key)
        error = load_errors.get(key) or (result.error if result is not None else None)
        mesh = result.mesh if result is not None and error is None else None
        record = {"generator": generator.name, "generator_version": generator.version, "error": error}
        if mesh is not None:
            problems = mesh_problems(mesh)
            record.update(mesh_summary(mesh), metrics=result.metrics, valid=not problems, problems=problems)
            if problems:
                invalid[key] = "; ".join(problems)
        else:
            invalid[key] = error or "no mesh produced"
        store.save_generated(home, key, mesh, record)
        context.add_asset_metadata(
            {name: value for name, value in record.items() if isinstance(value, (str, int, float, bool))},
            partition_key=key,
        )
    return [request.key for request in requests], seconds


def _report_image(context: dg.AssetExecutionContext, home: OrfeasHome, key: str, state: str, **fields) -> None:
    """Record an image's final state in its job's status.json and in the partition's metadata."""
    try:
        outbox.record_image(home, job_id_of(key), file_of(key), state, **fields)
    except LookupError as error:
        context.log.warning(f"{key}: no job status to update ({error})")
    metadata = {"state": state, **({"error": fields["error"]} if "error" in fields else {})}
    if "outputs" in fields:
        metadata["files"] = dg.MetadataValue.json(fields["outputs"])
    context.add_asset_metadata(metadata, partition_key=key)


def _requests_for(home: OrfeasHome, keys: list[str]):
    """Generation requests with each job's resolution and seed; unreadable images as errors."""
    from orfeas_pipelines.lib.generation.base import GenerationRequest
    from orfeas_pipelines.lib.images import ImageError, load_image

    requests, errors = [], {}
    for key in keys:
        try:
            params = _manifest(home, job_id_of(key)).params
            image = load_image(home.jobs / key)
        except (ImageError, FileNotFoundError, ValueError) as error:
            errors[key] = str(error)
            continue
        requests.append(GenerationRequest(key=key, image=image, resolution=params.resolution, seed=params.seed))
    return requests, errors


def _manifest(home: OrfeasHome, job_id: str):
    return _cached_manifest(home.jobs / job_id / "job.json")


@lru_cache(maxsize=4096)
def _cached_manifest(path: Path):
    """Accepted jobs are immutable, so their manifests can be cached per process."""
    from orfeas_pipelines.lib.intake.manifest import parse_manifest

    if not path.exists():
        raise FileNotFoundError(f"{path.parent.name}: no accepted job (missing {path})")
    return parse_manifest(path.read_bytes())


def _evenly_spaced(items: list, count: int) -> list:
    """A deterministic sample spread over the batch, so every batch position gets checked."""
    if count <= 0 or not items:
        return []
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(index * step)] for index in range(count)]


def _batch_table(batches) -> dg.MetadataValue:
    return dg.MetadataValue.md(
        "| batch size | seconds | peak memory (MiB) | device | after OOM |\n|---|---|---|---|---|\n"
        + "\n".join(
            f"| {b.batch_size} | {b.seconds:.3f} | {b.peak_memory_bytes / 2**20:.0f} | {b.device} | {b.retried_after_oom} |"
            for b in batches
        )
    )

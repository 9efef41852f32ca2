"""Batched versus one-by-one generation, measured side by side in one process.

The same images go through the auto batch size and through batch size 1, alternating
after a warm-up, so both see the same machine state. The ratio is sequential time over
batched time: above 1 means batching is faster.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from orfeas_pipelines.lib.batching import BatchReport, generate_in_batches
from orfeas_pipelines.lib.compare import compare_batch_to_sequential
from orfeas_pipelines.lib.generation.base import GenerationRequest, create_generator
from orfeas_pipelines.lib.images import load_image
from orfeas_pipelines.lib.samples import sample_image_paths


def bench_generator(
    backend: str = "inflate",
    resolutions: Sequence[int] = (64, 128, 256),
    images: int = 8,
    device: str = "auto",
    model_path: str | None = None,
    rounds: int = 3,
    **backend_options: Any,
) -> list[dict[str, Any]]:
    """One row per resolution: batch size, seconds per image both ways, ratio, and whether
    the batched meshes matched the sequential ones. `rounds` repeats the pair of runs and
    keeps each side's fastest, which steadies the ratio on a busy machine."""
    if images < 1:
        raise ValueError(f"images must be at least 1, got {images}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    if model_path is not None:
        backend_options["model_path"] = model_path
    generator = create_generator(backend, device=device, **backend_options)
    paths = sample_image_paths()
    pictures = [load_image(path) for path in paths]
    rows = []
    for resolution in resolutions:
        requests = [
            GenerationRequest(
                key=f"{paths[index % len(paths)].stem}-{index}",
                image=pictures[index % len(pictures)],
                resolution=resolution,
            )
            for index in range(images)
        ]
        generate_in_batches(generator, requests[:2], batch_size=2)
        batched_seconds, sequential_seconds = [], []
        for _round in range(rounds):
            reports: list[BatchReport] = []
            started = time.perf_counter()
            batched = generate_in_batches(generator, requests, on_batch=reports.append)
            batched_seconds.append(time.perf_counter() - started)
            started = time.perf_counter()
            sequential = generate_in_batches(generator, requests, batch_size=1)
            sequential_seconds.append(time.perf_counter() - started)
        agreement = compare_batch_to_sequential(
            {result.key: result.mesh for result in batched}, {result.key: result.mesh for result in sequential}
        )
        batched_time, sequential_time = min(batched_seconds), min(sequential_seconds)
        rows.append(
            {
                "backend": backend,
                "device": str(generator.device),
                "resolution": resolution,
                "images": images,
                "batch_size": max(report.batch_size for report in reports),
                "batched_s_per_image": batched_time / images,
                "sequential_s_per_image": sequential_time / images,
                "ratio": sequential_time / batched_time,
                "matched": agreement.passed,
                "max_chamfer": max((d for d in agreement.distances.values() if d is not None), default=None),
                "failed": sum(1 for result in batched if not result.ok),
            }
        )
    return rows

"""`orfeas bench pipeline`: how much of an end-to-end run is spent generating.

Side by side in one process, on the same N images (the bundled samples, cycled): the
generator alone (auto batch size), then `orfeas process` on the same images submitted as N
single-image jobs, end to end: intake, Dagster's bookkeeping, decoding, generation, the
blocking check, exports to stl+glb, previews and status files. Efficiency = generator
seconds / end-to-end seconds. Imports and the generator are warmed up first, so neither
side pays for them. The two are timed alternately `repeats` times and each side's best
time counts: on a shared machine the best is the one least disturbed by other processes.

The split of the best end-to-end run: `outside_runs_s` is the intake tick, registering
partitions and source images, the drain's look-up and settling after the run; `run_s` is
the run itself, in which one thread generates and re-checks (`generate_s`, `check_s`) while
another decodes the window after (`decode_s`) and a third delivers the window before
(`deliver_s`, `status_s`) and writes Dagster's events; `generator_idle_s` is the run's time in
which the generating thread had nothing to do (run start and end, decoding the first window,
the last window's delivery, waiting for a free window slot). `dagster_bookkeeping_s` is the
delivering thread's time outside its own stages (event writes, run and step events). The deliveries' parts are thread-seconds
(`validate_cpu`, `export_cpu`, `preview_cpu`, `pictures_cpu`: they run on every CPU at once).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from orfeas_pipelines.lib.home import OrfeasHome

FORMATS = ("stl", "glb")
GENERATING_STAGES = ("generate", "check")
DELIVERING_STAGES = ("wait_for_window", "deliver", "status")


def bench_pipeline(images: int = 32, resolution: int = 128, repeats: int = 3) -> dict[str, Any]:
    """One row: both best timings, the efficiency, and the best end-to-end run split by stage."""
    from orfeas_pipelines.lib.batching import generate_in_batches
    from orfeas_pipelines.lib.generation.base import GenerationRequest, create_generator
    from orfeas_pipelines.lib.images import load_image
    from orfeas_pipelines.lib.samples import sample_image_paths

    if images < 1 or repeats < 1:
        raise ValueError(f"images and repeats must be at least 1, got {images} and {repeats}")
    paths = [sample_image_paths()[index % len(sample_image_paths())] for index in range(images)]
    pictures = {path: load_image(path) for path in set(paths)}
    requests = [
        GenerationRequest(key=f"{index}/{path.name}", image=pictures[path], resolution=resolution)
        for index, path in enumerate(paths)
    ]
    generator = create_generator("inflate", device="cpu")
    generate_in_batches(generator, requests[:2])
    generator_times, rows = [], []
    with tempfile.TemporaryDirectory(prefix="orfeas-bench-pipeline-") as tmp:
        _warm_up(Path(tmp) / "warm-up", resolution)
        for repeat in range(repeats):
            started = time.perf_counter()
            results = generate_in_batches(generator, requests)
            generator_times.append(time.perf_counter() - started)
            if not all(result.ok for result in results):
                raise RuntimeError("bench pipeline: the generator failed on a sample image")
            rows.append(_end_to_end(OrfeasHome.at(Path(tmp) / f"home-{repeat}"), paths, resolution))
    all_end_to_end = "/".join(f"{row['end_to_end_seconds']:.1f}" for row in rows)
    best = min(rows, key=lambda row: row["end_to_end_seconds"])
    end_to_end = best.pop("end_to_end_seconds")
    return {
        "images": images,
        "resolution": resolution,
        "generator_seconds": round(min(generator_times), 2),
        "end_to_end_seconds": round(end_to_end, 2),
        "efficiency": round(min(generator_times) / end_to_end, 3),
        "all_generator_s": "/".join(f"{seconds:.1f}" for seconds in generator_times),
        "all_end_to_end_s": all_end_to_end,
        **best,
    }


def _end_to_end(home: OrfeasHome, paths: list[Path], resolution: int) -> dict[str, Any]:
    """`orfeas init` and one job per image (neither timed), then time `orfeas process` and
    split it by stage."""
    from orfeas_pipelines.lib import outbox
    from orfeas_pipelines.lib.intake.registry import create_agent
    from orfeas_pipelines.lib.intake.submit import write_job
    from orfeas_pipelines.runner import init_home, open_instance, process_once

    init_home(home)
    agent = create_agent(home.agents_file, "bench", rate_per_minute=1_000_000, max_images=1)
    job_ids = [write_job(home, [path], agent.agent_id, agent.secret, formats=FORMATS, resolution=resolution) for path in paths]
    started = time.perf_counter()
    report = process_once(home)
    end_to_end = time.perf_counter() - started
    unfinished = [job_id for job_id in job_ids if (outbox.read_status(home, job_id) or {}).get("state") != "succeeded"]
    if unfinished:
        raise RuntimeError(f"bench pipeline: {len(unfinished)} jobs did not succeed, e.g. {unfinished[0]}")
    with open_instance(home) as instance:
        records = [instance.get_run_record_by_id(run_id) for run_id in report.run_ids]
        stages: dict[str, float] = {}
        for record in records:
            for stage, seconds in json.loads(record.dagster_run.tags.get("orfeas/stage_seconds", "{}")).items():
                stages[stage] = stages.get(stage, 0.0) + seconds
        run_seconds = sum(record.end_time - record.start_time for record in records)
        events = sum(len(instance.get_records_for_run(run_id).records) for run_id in report.run_ids)
    generating = sum(stages.get(stage, 0.0) for stage in GENERATING_STAGES)
    delivering = sum(stages.get(stage, 0.0) for stage in DELIVERING_STAGES)
    return {
        "end_to_end_seconds": end_to_end,
        "runs": len(records),
        "run_events": events,
        "outside_runs_s": round(end_to_end - run_seconds, 2),
        "run_s": round(run_seconds, 2),
        "generator_idle_s": round(run_seconds - generating, 2),
        "dagster_bookkeeping_s": round(run_seconds - delivering, 2),
        **{f"{stage}_s": round(seconds, 2) for stage, seconds in sorted(stages.items())},
    }


def _warm_up(root: Path, resolution: int) -> None:
    """One job through the whole path, so imports and caches are warm for the timed run."""
    from orfeas_pipelines.lib.samples import sample_image_paths

    _end_to_end(OrfeasHome.at(root), sample_image_paths()[:1], resolution)

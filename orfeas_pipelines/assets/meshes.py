"""Images in, delivered meshes out: one partitioned asset per stage an image really has.

- `source_image` is reported by the intake sensor when it accepts a job: intake already read,
  hashed and decoded every image, so its facts (hash, size) are recorded there, once.
- `mesh` generates a range of images in memory-sized batches and delivers each mesh to its
  job's outbox in the requested formats with a preview. A partition is materialized only
  when its files are delivered, so Dagster's partition status is the truth about an image:
  materialized = delivered; a failed `mesh_is_valid` check = failed for good (not an image,
  no foreground, an invalid mesh, not an accepted job); missing without a failed check =
  not yet delivered, or failed in a way a retry can fix (out of memory at batch size one,
  an I/O error, a killed run). Those fail the run after the rest is delivered, so Dagster's
  run retries and the drain pick them up at once.

Every asset uses a single-run backfill policy, so one run covers a whole range of image
partitions. Generation and delivery share one step: each window of images is decoded once,
generated, re-checked on a sample generated again (the blocking check), and delivered
while the windows after it are generated.
"""

import json
import os
import queue
import sys
import threading
import time
import warnings
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import dagster as dg

from orfeas_pipelines.partitions import images_partitions
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.resources.inference import MeshGeneratorResource

if TYPE_CHECKING:
    from orfeas_pipelines.lib.delivery import Delivery
    from orfeas_pipelines.lib.home import OrfeasHome

# The single-run backfill policy and partitioned checks are what make range runs batched and
# per-image; their beta/preview labels are noise here.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec", category=dg.PreviewWarning)

MESH = dg.AssetKey("mesh")
MIN_WINDOW = 4
"""Fewest images a window of a larger run holds: smaller batches would cost the device more
than the overlap of generation and delivery saves."""
WINDOWS_IN_MEMORY = 3
"""The window being delivered (its check rides in the window being generated), that one, and
the next one, decoded meanwhile."""
DELIVERY_NICENESS = 10
"""How much lower than generation the delivery threads are scheduled (see `_yield_to_generation`)."""
VALID_CHECK = "mesh_is_valid"
BATCH_CHECK = "batch_matches_sequential"

source_image = dg.AssetSpec(
    "source_image",
    partitions_def=images_partitions,
    group_name="meshes",
    kinds={"image"},
    description="An image an agent submitted, one partition per image keyed `<job_id>/<file>`. "
    "Reported by the intake sensor when the signed job is accepted into `jobs/<job_id>/`, "
    "with the hash and size intake verified.",
)

MESH_CHECKS = [
    dg.AssetCheckSpec(
        VALID_CHECK,
        asset=MESH,
        partitions_def=images_partitions,
        description="The image's mesh is non-empty, watertight, finite and free of degenerate "
        "faces. Fails, with the reason, for an image that gave no usable mesh and never will "
        "(not an image, no foreground, not an accepted job); warns, with the reasons, for a "
        "delivered mesh whose quality verdict is `suspect` (the mask may not be the object).",
    ),
    dg.AssetCheckSpec(
        BATCH_CHECK,
        asset=MESH,
        partitions_def=images_partitions,
        blocking=True,
        description="Evaluated on a sample of the run's images, drawn across windows and batch "
        "positions: each sampled image generated again gives the same mesh (the run's first "
        "one alone, later ones in the next window's batches, the last window's in a new batch "
        "in reverse order: new batch mates or none, a new position). A batch that leaks between "
        "items or differs from a sequential run fails it, and "
        "then nothing more of the run is delivered.",
    ),
]


class MeshRunConfig(dg.Config):
    """How a range run walks its images and how much of each window the blocking check re-runs.

    A run holds at most `images_in_memory` decoded images and their meshes at a time (three
    windows of a third of that: one delivered while its check rides in the one being
    generated, and the next one, decoded meanwhile), so a range of thousands of large photos
    needs no more memory than a few batches of them. The blocking
    check re-generates `recheck_fraction` of the run's images, spread over its windows: at
    least one, in the first window with batches to compare, and at most
    `max_recheck_per_window` in any window.
    """

    images_in_memory: int = 64
    recheck_fraction: float = 0.03
    max_recheck_per_window: int = 4


@dataclass
class RunTally:
    """What a run did, for its log and its settling; run-wide figures live here, not per image."""

    delivered: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    retryable: dict[str, str] = field(default_factory=dict)
    batches: list = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def stage(self, name: str):
        """Time a stage of the run on the delivering thread (wait_for_window, deliver, status).

        The generating thread's stages (generate, check) and the decoding thread's (decode)
        are added per window, and the deliveries' parts (validate, export, preview, pictures)
        are summed as `<part>_cpu`; all of these overlap in time, so they are thread-seconds.
        """
        started = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - started


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            MESH,
            deps=[source_image],
            skippable=True,
            group_name="meshes",
            kinds={"pytorch", "file"},
            description="Each image's 3D mesh, generated in memory-sized batches on the inference "
            "device and delivered to `outbox/<job_id>/` in the job's formats with a preview. "
            "Materialized for a partition only when its files are delivered.",
        )
    ],
    partitions_def=images_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    check_specs=MESH_CHECKS,
    can_subset=True,
    pool="gpu",
)
def mesh(
    context: dg.AssetExecutionContext,
    config: MeshRunConfig,
    orfeas_home: OrfeasHomeResource,
    mesh_generator: MeshGeneratorResource,
) -> Iterator:
    """Generate, check and deliver every image of the run's range, a window at a time: while
    one window is delivered, the next is generated and re-checked on a background thread and
    the one after is decoded on another, so the device does not wait for decoding,
    validation, encoding, previews or Dagster's event writes."""
    from orfeas_pipelines.sensors.status import settle_run

    if config.images_in_memory < WINDOWS_IN_MEMORY:
        raise dg.Failure(f"images_in_memory must be at least {WINDOWS_IN_MEMORY}, got {config.images_in_memory}")
    home = orfeas_home.home
    keys = _keys_to_run(context)
    tally = RunTally()
    with WindowGenerator(config, home, mesh_generator, _windows(keys, config.images_in_memory), tally) as windows:
        with tally.stage("status"):  # the images are running: said while the first window generates
            settle_cursor = settle_run(context.instance, context.run, home, keys)
        for window in windows:
            leaked = yield from _deliver_window(context, home, mesh_generator, window, tally)
            with tally.stage("status"):
                settle_cursor = settle_run(context.instance, context.run, home, keys, after=settle_cursor)
            if leaked:
                context.log.error("blocking check failed: the rest of the run is not delivered")
                break
    _log_summary(context, mesh_generator, keys, tally)
    if tally.retryable:
        sample = "; ".join(f"{key}: {reason}" for key, reason in list(tally.retryable.items())[:5])
        raise dg.Failure(
            f"{len(tally.retryable)} images failed in a way a retry can fix ({sample}); "
            f"the other {tally.delivered} were delivered",
            allow_retries=True,
        )


def _windows(keys: list[str], images_in_memory: int) -> list[list[str]]:
    """The run's keys in windows: at most a third of `images_in_memory` (see
    WINDOWS_IN_MEMORY), a quarter of the run for a small run (at least
    MIN_WINDOW images), so a small run also delivers while it generates.

    The windows grow from MIN_WINDOW at the start and shrink back to it at the end (doubling
    and halving): the first delivery starts soon after the run does, and the last window,
    whose delivery nothing overlaps, is short. The middle windows are about equal.
    """
    if not keys:
        return []
    largest = min(images_in_memory // WINDOWS_IN_MEMORY, max(MIN_WINDOW, -(-len(keys) // 4)))
    ramp, size = [], MIN_WINDOW
    while size < largest and len(keys) - 2 * (sum(ramp) + size) >= largest:
        ramp.append(size)
        size *= 2
    middle = len(keys) - 2 * sum(ramp)
    count = -(-middle // largest)
    sizes = [*ramp, *(middle // count + (index < middle % count) for index in range(count)), *reversed(ramp)]
    starts = [sum(sizes[:index]) for index in range(len(sizes))]
    return [keys[start : start + size] for start, size in zip(starts, sizes)]


@dataclass
class GeneratedWindow:
    """One window decoded and generated; `checked` resolves to the blocking check's
    evaluations and whether the sample leaked."""

    index: int
    keys: list[str]
    requests: list
    load_failures: dict
    results: dict
    batches: list
    seconds: defaultdict[str, float]
    """Seconds by stage: generate and check on the generating thread, decode on the decoding one."""
    sample: list = field(default_factory=list)
    """The requests of this window the blocking check generates again."""
    checked: Future = field(default_factory=Future)


class WindowGenerator:
    """Generates and re-checks the run's windows in order on one background thread, while a
    second one decodes the window after, never more than WINDOWS_IN_MEMORY windows in memory
    (a window holds its slot from decoding until it is delivered).

    Iterating yields each window as soon as it is generated, while its blocking check still
    runs (`checked`), so delivery prepares files meanwhile and publishes them once it passed.
    The run's first sample is generated again image by image: batched against sequential.
    Later windows' checks ride in the next window's generation: the sample is generated
    again at the end of that window's requests (new batch mates, a new position) for about
    the cost of as many more images in a batch, instead of a pass of its own. The last
    window's sample is generated again on its own (`_recheck_alone`).
    """

    def __init__(self, config: MeshRunConfig, home: "OrfeasHome", mesh_generator: MeshGeneratorResource, windows: list, tally: RunTally):
        self._config, self._home, self._generator, self._windows = config, home, mesh_generator, windows
        self._tally = tally
        self._produced = self._rechecked = 0
        self._ready: queue.Queue = queue.Queue()
        self._free_slots = threading.Semaphore(WINDOWS_IN_MEMORY)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._work, name="orfeas-generate", daemon=True)

    def __enter__(self) -> "WindowGenerator":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._free_slots.release()
        self._thread.join()

    def __iter__(self) -> Iterator[GeneratedWindow]:
        for _ in self._windows:
            with self._tally.stage("wait_for_window"):
                window = self._ready.get()
            if isinstance(window, BaseException):
                raise window
            yield window
            self._free_slots.release()

    def _work(self) -> None:
        awaiting: GeneratedWindow | None = None  # its sample rides in the next window
        with ThreadPoolExecutor(1, thread_name_prefix="orfeas-decode") as decoder:
            loading = decoder.submit(self._load, self._windows[0]) if self._windows else None
            for index, keys in enumerate(self._windows):
                try:
                    loaded = loading.result()
                    if loaded is None or self._stopped.is_set():
                        return
                    if index + 1 < len(self._windows):
                        loading = decoder.submit(self._load, self._windows[index + 1])
                    window, rechecked = self._generate(index, keys, loaded, awaiting)
                except BaseException as error:  # the delivering thread raises it
                    if awaiting is not None:
                        awaiting.checked.set_exception(error)
                    self._ready.put(error)
                    return
                if awaiting is not None:
                    _judge(awaiting, rechecked)
                self._ready.put(window)
                first = self._rechecked == 0
                awaiting = None
                if self._draw_sample(window):
                    if first:
                        self._recheck_alone(window, one_by_one=True)
                    else:
                        awaiting = window
            if awaiting is not None:
                self._recheck_alone(awaiting, one_by_one=False)

    def _load(self, keys: list[str]) -> tuple[list, dict, float] | None:
        """A window's requests decoded on the decoding thread, as soon as it has a slot: the next
        window is read while this one generates, so the device never waits for decoding but
        for the run's first window. None once the run stopped."""
        from orfeas_pipelines.lib.delivery import load_requests

        self._free_slots.acquire()
        if self._stopped.is_set():
            self._free_slots.release()
            return None
        started = time.perf_counter()
        requests, load_failures = load_requests(self._home, keys)
        return requests, load_failures, time.perf_counter() - started

    def _generate(
        self, index: int, keys: list[str], loaded: tuple[list, dict, float], awaiting: GeneratedWindow | None
    ) -> tuple[GeneratedWindow, list]:
        """The window's decoded images generated, with the sample of the window before at the
        end; returns the window and the sample's new results."""
        requests, load_failures, decoding = loaded
        riders = awaiting.sample if awaiting is not None else []
        started = time.perf_counter()
        batches: list = []
        results = self._generator.generate([*requests, *riders], on_batch=batches.append)
        generating = time.perf_counter() - started
        riding = generating * len(riders) / max(1, len(requests) + len(riders))
        if awaiting is not None:
            awaiting.seconds["check"] += riding
        own = {result.key: result for result in results[: len(requests)]}
        seconds = defaultdict(float, decode=decoding, generate=generating - riding)
        return GeneratedWindow(index, keys, requests, load_failures, own, batches, seconds), results[len(requests) :]

    def _draw_sample(self, window: GeneratedWindow) -> bool:
        """This window's share of the run's sample (`recheck_fraction` of the images generated
        so far, at least one as soon as a window has batches to compare) into `window.sample`;
        a window with nothing to re-check is judged at once. Returns whether it awaits a check."""
        from orfeas_pipelines.lib.compare import recheck_sample

        produced = {key for key, result in window.results.items() if result.ok}
        self._produced += len(produced)
        due = round(self._config.recheck_fraction * self._produced) - self._rechecked
        count = min(self._config.max_recheck_per_window, max(due, 1 if self._rechecked == 0 else 0))
        batches = [[key for key in batch.keys if key in produced] for batch in window.batches]
        keys = recheck_sample(batches, count, rotation=window.index)
        by_key = {request.key: request for request in window.requests}
        window.sample = [by_key[key] for key in keys]
        self._rechecked += len(keys)
        if not keys:
            window.checked.set_result(([], False))
        return bool(keys)

    def _recheck_alone(self, window: GeneratedWindow, one_by_one: bool) -> None:
        """A sample generated again on its own: the run's first one image by image (batched
        against sequential, which riding in another batch cannot show), the last window's as
        one batch in reverse order (new batch mates, new positions)."""
        started = time.perf_counter()
        size = 1 if one_by_one else len(window.sample)
        try:
            again = self._generator.generate(window.sample[::-1], batch_size=size)[::-1]
        except BaseException as error:
            window.checked.set_exception(error)
            return
        window.seconds["check"] += time.perf_counter() - started
        _judge(window, again)


def _judge(window: GeneratedWindow, again: list) -> None:
    """The blocking check's evaluations for a window's sample generated a second time (in
    the sample's order), and whether any mesh differed: the window's `checked` result."""
    from orfeas_pipelines.lib.compare import same_mesh

    started = time.perf_counter()
    evaluations, leaked = [], False
    for request, result in zip(window.sample, again):
        distance, reason = same_mesh(window.results[request.key].mesh, result.mesh)
        passed = reason is None
        leaked |= not passed
        metadata = {"chamfer": distance if distance is not None else -1.0, "recheck_batch": result.metrics.get("batch_size", 0)}
        if reason:
            metadata["reason"] = reason
        evaluations.append(
            dg.AssetCheckEvaluation(
                asset_key=MESH, check_name=BATCH_CHECK, passed=passed, partition=request.key, metadata=metadata,
                blocking=True,
            )
        )
    window.seconds["check"] += time.perf_counter() - started
    window.checked.set_result((evaluations, leaked))


def _deliver_window(
    context: dg.AssetExecutionContext,
    home: "OrfeasHome",
    mesh_generator: MeshGeneratorResource,
    window: GeneratedWindow,
    tally: RunTally,
) -> Iterator:
    """Prepare the window's files while its check runs, then publish them and record each
    image's outcome, or discard them all when the check failed; returns True in that case."""
    from orfeas_pipelines.lib.batching import usable_cpus
    from orfeas_pipelines.lib.delivery import discard, prepare, publish

    tally.batches += window.batches
    with tally.stage("status"):
        _record_batches(home, mesh_generator, window.batches)
    with tally.stage("deliver"), ThreadPoolExecutor(usable_cpus(), initializer=_yield_to_generation) as pool:
        prepared = {
            request.key: pool.submit(prepare, home, request, window.results[request.key]) for request in window.requests
        }
        evaluations, leaked = window.checked.result()
        outcomes = {key: future.result() for key, future in prepared.items()}
        for key, outcome in outcomes.items():
            if leaked:
                discard(outcome)
            else:
                publish(key, outcome)
    for stage, seconds in window.seconds.items():
        tally.seconds[stage] += seconds
    for evaluation in evaluations:
        yield evaluation
    if leaked:
        return True
    for key in window.keys:
        outcome = outcomes.get(key)
        failure = window.load_failures.get(key) or outcome.failure
        for stage, seconds in (outcome.seconds.items() if outcome else ()):
            tally.seconds[f"{stage}_cpu"] += seconds
        if failure is None:
            tally.delivered += 1
            yield dg.AssetMaterialization(MESH, partition=key, metadata=_delivery_metadata(outcome, mesh_generator.backend))
            yield _verdict_evaluation(key, outcome)
        elif failure.retryable:
            tally.retryable[key] = failure.message
            context.log.error(f"{failure.message} (will be retried)")
        else:
            tally.failed[key] = failure.message
            context.log.error(failure.message)
            metadata = {"error": failure.message, "code": failure.code}
            if outcome is not None and outcome.pictures:
                metadata["pictures"] = dg.MetadataValue.md(outcome.pictures)
            yield _valid_evaluation(key, False, metadata)
    return False


def _yield_to_generation() -> None:
    """Lower this delivery thread's scheduling priority (Linux: a thread's own nice value), so
    on a CPU that generation keeps busy the deliveries mostly take the time it leaves: measured
    on 2 cores, generating 65 images beside delivering 64 took 12% longer than generating
    alone with nice delivery threads, 19% without. Each delivered mesh still costs generation
    about half its CPU time through the cores' shared cache and memory, whatever its priority
    (docs/BENCHMARKS.md). Elsewhere a no-op."""
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DELIVERY_NICENESS)


def _record_batches(home: "OrfeasHome", mesh_generator: MeshGeneratorResource, batches: list) -> None:
    """Each forward pass into the metrics store, which `orfeas serve` exports to Prometheus."""
    from orfeas_pipelines.lib.metrics import record_batch

    for batch in batches:
        record_batch(home, mesh_generator.backend, batch.device, batch.batch_size, batch.seconds,
                     batch.peak_memory_bytes, batch.retried_after_oom)


def _keys_to_run(context: dg.AssetExecutionContext) -> list[str]:
    """The run's partitions, less those a run of the same retry family already delivered.

    A retried run (Dagster's run retries) covers the same range as the run it retries; the
    images that run delivered are not delivered twice.
    """
    keys = list(context.partition_keys)
    root = context.run.tags.get("dagster/root_run_id")
    if not root:
        return keys
    family = {root, *context.instance.get_run_ids(dg.RunsFilter(tags={"dagster/root_run_id": root}))}
    delivered = {
        record.partition_key
        for record in context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=MESH, asset_partitions=keys), limit=len(keys) * 4
        ).records
        if record.run_id in family
    }
    if delivered:
        context.log.info(f"retry of {root}: {len(delivered)} images were already delivered and are skipped")
    return [key for key in keys if key not in delivered]


def _valid_evaluation(key: str, passed: bool, metadata: dict, warn: bool = False) -> dg.AssetCheckEvaluation:
    severity = dg.AssetCheckSeverity.WARN if warn else dg.AssetCheckSeverity.ERROR
    return dg.AssetCheckEvaluation(
        asset_key=MESH, check_name=VALID_CHECK, passed=passed, partition=key, metadata=metadata, severity=severity
    )


def _verdict_evaluation(key: str, outcome: "Delivery") -> dg.AssetCheckEvaluation:
    """A delivered mesh passes; a suspect one (delivered, but maybe not the object) warns with its reasons."""
    quality = outcome.quality or {"verdict": "ok", "reasons": []}
    metadata = {"faces": outcome.metrics.get("faces", 0), "verdict": quality["verdict"]}
    if quality["verdict"] == "ok":
        return _valid_evaluation(key, True, metadata)
    return _valid_evaluation(key, False, {**metadata, "reasons": dg.MetadataValue.json(quality["reasons"])}, warn=True)


def _delivery_metadata(outcome: "Delivery", backend: str) -> dict:
    """Per-image facts shown on the partition: the mesh, its files and how it was made."""
    metadata = {name: value for name, value in outcome.metrics.items() if isinstance(value, (int, float, str, bool))}
    metadata["backend"] = backend
    metadata["files"] = dg.MetadataValue.json(outcome.outputs)
    metadata["pictures"] = dg.MetadataValue.md(outcome.pictures)
    metadata["folder"] = dg.MetadataValue.path(str(outcome.folder))
    if outcome.quality is not None:
        metadata["verdict"] = outcome.quality.get("verdict", "ok")
        metadata["quality"] = dg.MetadataValue.json(outcome.quality)
    return metadata


def _log_summary(context, mesh_generator: MeshGeneratorResource, keys: list[str], tally: RunTally) -> None:
    """The run-wide figures: a log line, and the stage times as a run tag (`orfeas/stage_seconds`)."""
    generator = mesh_generator.generator
    generating = tally.seconds["generate"]
    rate = tally.delivered / generating if generating else 0.0
    sizes = [batch.batch_size for batch in tally.batches]
    stages = {stage: round(seconds, 3) for stage, seconds in tally.seconds.items()}
    context.instance.add_run_tags(context.run_id, {"orfeas/stage_seconds": json.dumps(stages, sort_keys=True)})
    context.log.info(
        f"{len(keys)} images on {generator.name}/{generator.device}: {tally.delivered} delivered, "
        f"{len(tally.failed)} failed, {len(tally.retryable)} to retry; {len(sizes)} batches "
        f"(sizes {min(sizes, default=0)}-{max(sizes, default=0)}), {generating:.2f} s generating "
        f"({rate:.2f} images/s); seconds by stage {stages}"
    )

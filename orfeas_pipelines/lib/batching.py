"""Run a generator over many requests in batches that fit the device's memory.

The batch size is picked from free memory (CUDA) or a memory budget (CPU), and an
out-of-memory error halves the batch and retries down to one item; an item that does not
fit even alone becomes that item's error. No request is ever dropped.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass
from itertools import groupby
from typing import Callable, Sequence

from orfeas_pipelines.lib.generation.base import Generator, GenerationRequest, GenerationResult

log = logging.getLogger(__name__)

MAX_AUTO_BATCH = 32


@dataclass(frozen=True)
class BatchReport:
    """What one forward pass cost, recorded as run metadata."""

    batch_size: int
    keys: tuple[str, ...]
    seconds: float
    peak_memory_bytes: int
    device: str
    retried_after_oom: bool


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA OOM and for CPU allocation failures, which torch raises as RuntimeError."""
    import torch

    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


def available_memory_bytes(device_type: str) -> int:
    """Free memory on the device: CUDA's own figure, or the host's available RAM."""
    if device_type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity where the OS has one, e.g. in a container)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def auto_batch_size(
    generator: Generator,
    request: GenerationRequest,
    memory_fraction: float = 0.5,
    memory_budget_bytes: int | None = None,
    max_batch_size: int = MAX_AUTO_BATCH,
) -> int:
    """How many items like `request` fit in `memory_fraction` of free memory (or the budget)."""
    budget = memory_budget_bytes or int(available_memory_bytes(generator.device.type) * memory_fraction)
    per_item = max(1, generator.item_memory_bytes(request))
    return max(1, min(max_batch_size, budget // per_item))


def generate_in_batches(
    generator: Generator,
    requests: Sequence[GenerationRequest],
    batch_size: int | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    memory_fraction: float = 0.5,
    memory_budget_bytes: int | None = None,
    learned_sizes: dict[str, int] | None = None,
) -> list[GenerationResult]:
    """Results in the order of `requests`. `batch_size=None` picks it from memory per group.

    `learned_sizes` (batch key → size) carries what out-of-memory taught across calls, so a
    caller that feeds a long stream in several calls pays for each lesson once.
    """
    results: dict[int, GenerationResult] = {}
    indexed = sorted(enumerate(requests), key=lambda pair: _sortable(generator.batch_key(pair[1])))
    for key, group in groupby(indexed, key=lambda pair: _sortable(generator.batch_key(pair[1]))):
        members = list(group)
        size = batch_size or auto_batch_size(
            generator, members[0][1], memory_fraction, memory_budget_bytes
        )
        if learned_sizes is not None:
            size = min(size, learned_sizes.get(key, size))
        start, halved = 0, False
        while start < len(members):
            chunk = members[start : start + size]
            outcome = _run_batch(generator, [request for _, request in chunk], on_batch, halved)
            if outcome is None:
                if size == 1:
                    index, request = chunk[0]
                    results[index] = GenerationResult(
                        key=request.key, error=f"{request.key}: out of memory even at batch size 1", retryable=True
                    )
                    start += 1
                    continue
                size, halved = max(1, len(chunk) // 2), True  # a short last chunk halves from its own size
                if learned_sizes is not None:
                    learned_sizes[key] = size
                log.warning("out of memory at batch size %d; retrying at %d", len(chunk), size)
                continue
            for (index, _request), result in zip(chunk, outcome):
                results[index] = result
            start += len(chunk)
    return [results[index] for index in range(len(requests))]


def _run_batch(
    generator: Generator,
    batch: list[GenerationRequest],
    on_batch: Callable[[BatchReport], None] | None,
    retried: bool,
) -> list[GenerationResult] | None:
    """One forward pass; None when it ran out of memory."""
    _reset_peak_memory(generator.device.type)
    started = time.perf_counter()
    try:
        outcome = generator.generate(batch)
    except Exception as error:  # noqa: BLE001 - only OOM is handled, the rest re-raised
        if not is_out_of_memory(error):
            raise
        _release_cached_memory(generator.device.type)
        return None
    if len(outcome) != len(batch):
        raise RuntimeError(
            f"generator {generator.name!r} returned {len(outcome)} results for {len(batch)} images"
        )
    seconds = time.perf_counter() - started
    for result in outcome:
        result.metrics.update(batch_size=len(batch), seconds=round(seconds / len(batch), 4))
    if on_batch is not None:
        on_batch(
            BatchReport(
                batch_size=len(batch),
                keys=tuple(request.key for request in batch),
                seconds=seconds,
                peak_memory_bytes=_peak_memory_bytes(generator.device.type),
                device=str(generator.device),
                retried_after_oom=retried,
            )
        )
    return outcome


def _sortable(key: object) -> str:
    return repr(key)


def _reset_peak_memory(device_type: str) -> None:
    if device_type == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def _release_cached_memory(device_type: str) -> None:
    if device_type == "cuda":
        import torch

        torch.cuda.empty_cache()


def _peak_memory_bytes(device_type: str) -> int:
    """CUDA's peak allocation for this batch, or the process's peak RSS on CPU."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

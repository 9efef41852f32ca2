from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from orfeas_pipelines.lib.batching import MAX_AUTO_BATCH, BatchReport, auto_batch_size, generate_in_batches
from orfeas_pipelines.lib.generation.base import GenerationRequest, GenerationResult

IMAGE = np.zeros((4, 4, 4), dtype=np.uint8)


@dataclass
class FakeGenerator:
    """Fails the whole batch with an out-of-memory error when it holds more than `fits` items."""

    fits: int = 1000
    error: type[BaseException] | None = None
    per_item_bytes: int = 100
    name: str = "fake"
    version: str = "0"
    device: torch.device = torch.device("cpu")
    calls: list[list[str]] = field(default_factory=list)

    def batch_key(self, request):
        return request.resolution

    def item_memory_bytes(self, request):
        return self.per_item_bytes

    def generate(self, requests):
        self.calls.append([request.key for request in requests])
        if len({request.resolution for request in requests}) != 1:
            raise AssertionError("mixed resolutions in one batch")
        if len(requests) > self.fits:
            if self.error is torch.cuda.OutOfMemoryError:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes")
        return [GenerationResult(key=request.key, metrics={"resolution": request.resolution}) for request in requests]


def requests(count: int, resolution: int = 64) -> list[GenerationRequest]:
    return [GenerationRequest(key=f"img{index}", image=IMAGE, resolution=resolution) for index in range(count)]


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError, RuntimeError])
def test_out_of_memory_halves_the_batch_and_keeps_every_result_in_order(error):
    generator = FakeGenerator(fits=3, error=error)
    reports: list[BatchReport] = []
    results = generate_in_batches(generator, requests(10), batch_size=8, on_batch=reports.append)
    assert [result.key for result in results] == [f"img{index}" for index in range(10)]
    assert all(result.error is None for result in results)
    assert [len(call) for call in generator.calls][:3] == [8, 4, 2]
    assert all(report.batch_size <= 3 for report in reports)
    assert sum(report.batch_size for report in reports) == 10
    assert all(report.retried_after_oom for report in reports)


def test_an_item_that_never_fits_becomes_its_own_error():
    results = generate_in_batches(FakeGenerator(fits=0), requests(3), batch_size=2)
    assert [result.key for result in results] == ["img0", "img1", "img2"]
    assert all(result.mesh is None and "out of memory even at batch size 1" in result.error for result in results)


def test_other_errors_are_not_swallowed():
    class Broken(FakeGenerator):
        def generate(self, requests):
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        generate_in_batches(Broken(), requests(2), batch_size=2)


def test_wrong_number_of_results_is_an_error():
    class Short(FakeGenerator):
        def generate(self, requests):
            return []

    with pytest.raises(RuntimeError, match="returned 0 results for 2 images"):
        generate_in_batches(Short(), requests(2), batch_size=2)


def test_auto_batch_size_comes_from_the_memory_budget():
    generator = FakeGenerator(per_item_bytes=100)
    request = requests(1)[0]
    assert auto_batch_size(generator, request, memory_budget_bytes=1000) == 10
    assert auto_batch_size(generator, request, memory_budget_bytes=50) == 1
    assert auto_batch_size(generator, request, memory_budget_bytes=10**12) == MAX_AUTO_BATCH
    generate_in_batches(generator, requests(25), memory_budget_bytes=1000)
    assert [len(call) for call in generator.calls] == [10, 10, 5]


def test_requests_are_grouped_by_batch_key_and_returned_in_input_order():
    generator = FakeGenerator()
    mixed = [GenerationRequest(key=f"k{index}", image=IMAGE, resolution=(64, 128)[index % 2]) for index in range(6)]
    results = generate_in_batches(generator, mixed, batch_size=4)
    assert [result.key for result in results] == [f"k{index}" for index in range(6)]
    assert [result.metrics["resolution"] for result in results] == [64, 128, 64, 128, 64, 128]
    assert sorted(len(call) for call in generator.calls) == [3, 3]


def test_a_learned_batch_size_carries_over_to_the_next_call_and_never_raises_an_explicit_one():
    generator = FakeGenerator(fits=2)
    learned: dict[str, int] = {}
    first = [GenerationRequest(key=f"a{i}", image=IMAGE) for i in range(4)]
    generate_in_batches(generator, first, batch_size=8, learned_sizes=learned)
    assert learned == {"128": 2}
    generator.calls.clear()
    second = [GenerationRequest(key=f"b{i}", image=IMAGE) for i in range(4)]
    generate_in_batches(generator, second, batch_size=8, learned_sizes=learned)
    assert [len(call) for call in generator.calls] == [2, 2], "no second out-of-memory"
    generator.calls.clear()
    generate_in_batches(generator, second, batch_size=1, learned_sizes=learned)
    assert [len(call) for call in generator.calls] == [1, 1, 1, 1]

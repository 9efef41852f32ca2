"""The decode worker: costly images decoded in a process that a CPU budget or a wall clock ends."""

import os
import signal

import pytest

from orfeas_pipelines.lib.images import ImageError
from orfeas_pipelines.lib.intake.decoding import DecodeBusy, DecodeWorker
from orfeas_pipelines_tests.lib.intake.drops import costly_jpeg

FORMATS = ("PNG", "JPEG", "WEBP")


@pytest.fixture(scope="module")
def photo():
    return costly_jpeg()


def verify(worker, data, cpu=5.0, wall=30.0):
    return worker.verify(data, "photo.jpg", 4096 * 4096, 16 * 1024 * 1024, FORMATS, cpu, wall)


def is_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_one_worker_serves_the_tick_and_ends_with_it(photo):
    with DecodeWorker() as worker:
        assert verify(worker, photo) == (2048, 2048)
        pid = worker._process.pid
        assert verify(worker, photo) == (2048, 2048) and worker._process.pid == pid
        with pytest.raises(ImageError) as error:
            verify(worker, photo[: len(photo) // 2] + b"\x00" * 16)
        assert error.value.code == "not_an_image" and worker._process.pid == pid
    assert not is_running(pid)


def test_an_image_over_its_cpu_budget_is_refused_and_the_next_one_gets_a_new_worker(photo):
    with DecodeWorker() as worker:
        with pytest.raises(ImageError) as error:
            verify(worker, photo, cpu=0.01)
        assert error.value.code == "decode_too_slow"
        assert str(error.value) == "photo.jpg: decoding takes over 0.01 s of CPU time"
        assert verify(worker, photo) == (2048, 2048)


def test_a_decode_the_wall_clock_cuts_within_its_cpu_budget_is_busy_not_refused(photo):
    with DecodeWorker() as worker:
        verify(worker, photo)
        stalled = worker._process.pid
        os.kill(stalled, signal.SIGSTOP)  # a machine too busy to give the worker any CPU time
        with pytest.raises(DecodeBusy, match="past 0.5 s of wall-clock time within its CPU budget") as busy:
            verify(worker, photo, wall=0.5)
        assert "\n" not in str(busy.value) and not is_running(stalled)
        assert verify(worker, photo) == (2048, 2048)

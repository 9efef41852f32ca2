"""Decoding agents' images under a CPU and a wall-clock budget, in a worker that can be abandoned.

lib/images refuses the known slow shapes (PNG chunks, JPEG markers and scans) before any
pixel is decoded; this bounds whatever those checks do not foresee. Cheap images (most of
them) are still decoded in the tick's own process (`IN_PROCESS_DECODE_COST`); a costlier one
goes to a worker process, started at the first such image, reused for the rest of the tick,
and killed when it overruns:

- over its CPU budget: the worker's own CPU timer (ITIMER_PROF, whose signal kills it even
  inside C code) ends it, and the image is refused, `decode_too_slow`: decoding it takes too
  long on any machine, so it is quarantined like any bad image;
- over the wall-clock limit while still under its CPU budget: the machine is busy, the image
  is not at fault, so DecodeBusy: the tick holds the entry and retries it with backoff.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from orfeas_pipelines.lib.images import ImageError, verify_image

_HEADER = struct.Struct(">II")
_READY = b"ready\n"
WORKER_START_SECONDS = 30.0
"""How long a new worker may take to import Pillow on a loaded machine before intake gives up."""


class DecodeBusy(RuntimeError):
    """Decoding ran past its wall-clock limit within its CPU budget: retry later (one line)."""


class DecodeWorker:
    """A decoding worker process for one tick; started at first use, replaced after a kill.

    Use it as a context manager so the process ends with the tick.
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> DecodeWorker:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def verify(
        self,
        data: bytes,
        name: str,
        max_pixels: int,
        max_bytes: int,
        formats: tuple[str, ...] | None,
        cpu_seconds: float,
        wall_seconds: float,
    ) -> tuple[int, int]:
        """`verify_image` in the worker; ImageError as there, or `decode_too_slow`, or DecodeBusy."""
        process = self._started()
        request = json.dumps(
            {"name": name, "max_pixels": max_pixels, "max_bytes": max_bytes, "formats": formats, "cpu": cpu_seconds}
        ).encode()
        deadline = time.monotonic() + wall_seconds
        sent = _send(process, _HEADER.pack(len(request), len(data)) + request + data, deadline)
        answer = _read_line(process, deadline) if sent else b""
        if answer is None or sent is None:
            self.close()
            raise DecodeBusy(
                f"image {name}: decoding ran past {wall_seconds:g} s of wall-clock time within its CPU budget "
                "(the machine is busy); retried later"
            )
        if not answer:
            code = self._ended()
            if code == -signal.SIGPROF:
                raise ImageError(name, f"decoding takes over {cpu_seconds:g} s of CPU time", "decode_too_slow")
            raise ImageError(name, f"the decoder crashed on it (exit status {code})")
        result = json.loads(answer)
        if "error" in result:
            raise ImageError(name, *result["error"])
        return tuple(result["size"])

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._ended()

    def _started(self) -> subprocess.Popen:
        if self._process is not None:
            return self._process
        package_root = str(Path(__file__).resolve().parents[3])
        path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env={**os.environ, "PYTHONPATH": path},
        )
        os.set_blocking(self._process.stdin.fileno(), False)  # so a stalled worker cannot block a write
        if _read_line(self._process, time.monotonic() + WORKER_START_SECONDS) != _READY:
            self.close()
            raise RuntimeError(f"the image decoding worker did not start within {WORKER_START_SECONDS:g} s")
        return self._process

    def _ended(self) -> int:
        process, self._process = self._process, None
        for pipe in (process.stdin, process.stdout):
            try:
                pipe.close()
            except BrokenPipeError:
                pass
        return process.wait()


def _send(process: subprocess.Popen, payload: bytes, deadline: float) -> bool | None:
    """Write the request as the worker reads it: True when sent, False when it died, None past `deadline`."""
    view, fd = memoryview(payload), process.stdin.fileno()
    while view:
        if not _wait(fd, deadline, writing=True):
            return None
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            continue
        except BrokenPipeError:
            return False
    return True


def _read_line(process: subprocess.Popen, deadline: float) -> bytes | None:
    """The worker's next line (one write of under a pipe's buffer), b"" when it died, None past `deadline`."""
    if not _wait(process.stdout.fileno(), deadline, writing=False):
        return None
    return process.stdout.readline()


def _wait(fd: int, deadline: float, writing: bool) -> bool:
    """Whether `fd` became ready before `deadline`."""
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    ready = select.select([], [fd], [], left)[1] if writing else select.select([fd], [], [], left)[0]
    return bool(ready)


def _serve() -> None:
    """The worker: for each request, decode under a CPU timer and answer one JSON line."""
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    answers.write(_READY)
    answers.flush()
    while header := requests.read(_HEADER.size):
        request_size, data_size = _HEADER.unpack(header)
        request = json.loads(requests.read(request_size))
        data = requests.read(data_size)
        formats = None if request["formats"] is None else tuple(request["formats"])
        signal.setitimer(signal.ITIMER_PROF, request["cpu"])
        try:
            size = verify_image(data, request["name"], request["max_pixels"], request["max_bytes"], formats)
            answer = {"size": size}
        except ImageError as error:
            answer = {"error": [error.reason, error.code]}
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        answers.write(json.dumps(answer).encode() + b"\n")
        answers.flush()


if __name__ == "__main__":
    _serve()

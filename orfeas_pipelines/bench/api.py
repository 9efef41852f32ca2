"""`orfeas bench api`: a real `orfeas serve` on loopback under load from another process.

The load generator is a plain asyncio loop over keep-alive HTTP/1.1 connections in a child
process (httpx itself would be the bottleneck on a small machine); every request is signed
afresh, as an agent's would be. Phases, each bounded in count and time:

- status: `GET /v1/jobs/{id}` at 64 concurrent clients; goal p99 < 50 ms and >= 1,000 req/s;
- submit: `POST /v1/jobs` with one 256 KiB PNG at 16 concurrent clients; goal p99 < 200 ms;
- events: 500 open SSE streams over 50 four-image jobs while their status files change (the
  run's status writer, `lib/outbox.py`, driven from this process: running, then each image
  succeeding); every stream must see every change and end after the terminal one, and the
  status load runs meanwhile (same goals). Event lag is updated_at to arrival.

Each row carries the 1-minute load average at the phase's start and end (`load_1m`): the
figures are only comparable at a similar load. The POST-to-succeeded time with the daemon is
`--end-to-end` (`bench/end_to_end.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orfeas_pipelines.lib.home import OrfeasHome

STATUS_CLIENTS = 64
SUBMIT_CLIENTS = 16
EVENT_JOBS = 50
EVENT_IMAGES = 4
EVENT_CHANGES = 1 + EVENT_IMAGES
SUBMIT_IMAGE_BYTES = 256 * 1024
_CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.IGNORECASE)


def bench_api(seconds: float = 10.0, streams: int = 500, tmp_dir: str | Path | None = None) -> list[dict]:
    """Rows of (phase, clients, requests, p50/p95/p99 ms, req/s, goal, goal_met)."""
    from orfeas_pipelines.client import OrfeasClient
    from orfeas_pipelines.lib.intake.registry import create_agent

    with tempfile.TemporaryDirectory(prefix="orfeas-bench-api-", dir=tmp_dir) as root:
        home = OrfeasHome.at(Path(root) / "home").ensure()
        agent = create_agent(home.agents_file, "bench-api", rate_per_minute=1_000_000, max_images=EVENT_IMAGES)
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "orfeas_pipelines.cli", "serve", "--home", str(home.root), "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_healthy(base, server)
            with OrfeasClient(base, agent.agent_id, agent.secret) as client:
                tiles = [(f"tile{index}.png", _png(16)) for index in range(EVENT_IMAGES)]
                jobs = [client.submit(tiles, resolution=64)["job_id"] for _ in range(EVENT_JOBS)]
            load = dict(port=port, agent_id=agent.agent_id, secret=agent.secret, seconds=seconds)
            rows = _with_load_average(lambda: [_status_row("status", _in_child(_status_load, load, jobs, STATUS_CLIENTS))])
            rows += _with_load_average(lambda: [_submit_row(_in_child(_submit_load, load, SUBMIT_CLIENTS))])
            rows += _with_load_average(lambda: _events_rows(home, load, jobs, streams))
        finally:
            server.terminate()
            server.wait(10)
    return rows


def machine_line() -> str:
    """The machine the figures belong to: CPU model, cores and load average (the machine may be shared)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    return f"machine: {model}, {os.cpu_count()} cores, Python {platform.python_version()}; load average (1, 5, 15 min) {load}"


def _with_load_average(phase) -> list[dict]:
    """The phase's rows, each with the 1-minute load average at the phase's start and end."""
    before = os.getloadavg()[0]
    rows = phase()
    after = os.getloadavg()[0]
    return [row | {"load_1m": f"{before:.1f}-{after:.1f}"} for row in rows]


def _status_row(phase: str, measured: tuple[list[float], float]) -> dict:
    row = _summary(phase, STATUS_CLIENTS, *measured)
    row["goal"] = "p99 < 50 ms, >= 1000 req/s"
    row["goal_met"] = row["p99_ms"] < 50 and row["req_per_s"] >= 1000
    return row


def _submit_row(measured: tuple[list[float], float]) -> dict:
    row = _summary("submit 256 KiB", SUBMIT_CLIENTS, *measured)
    row["goal"] = "p99 < 200 ms"
    row["goal_met"] = row["p99_ms"] < 200
    return row


def _events_rows(home: OrfeasHome, load: dict, jobs: list[str], streams: int) -> list[dict]:
    """Open the streams, drive EVENT_CHANGES status changes per job, run the status load meanwhile."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ready = context.Event()
    listener = context.Process(target=_child, args=(results, _sse_load, (load, jobs, streams, ready)))
    listener.start()
    if not ready.wait(60):
        listener.kill()
        raise RuntimeError("the SSE streams did not open within 60 s")
    prober = context.Process(target=_child, args=(results, _status_load, (load, jobs, STATUS_CLIENTS)))
    prober.start()
    _drive_jobs(home, jobs, load["seconds"])
    outcomes = [results.get(timeout=load["seconds"] + 120) for _ in range(2)]
    listener.join(10)
    prober.join(10)
    streams_result = next(outcome for outcome in outcomes if isinstance(outcome, dict))
    measured = next(outcome for outcome in outcomes if isinstance(outcome, tuple))
    expected = 1 + EVENT_CHANGES
    complete = sum(1 for count in streams_result["events"] if count == expected)
    row = _status_row(f"status during {streams} SSE streams", measured)
    events_row = {
        "phase": f"events: {streams} SSE streams",
        "clients": streams,
        "requests": sum(streams_result["events"]),
        "p50_ms": round(streams_result["lag_p50_ms"], 1),
        "p95_ms": round(streams_result["lag_p95_ms"], 1),
        "p99_ms": round(streams_result["lag_p99_ms"], 1),
        "req_per_s": None,
        "goal": f"every stream gets all {expected} events and ends",
        "goal_met": complete == streams,
    }
    return [events_row, row]


def _drive_jobs(home: OrfeasHome, jobs: list[str], seconds: float) -> None:
    """EVENT_CHANGES changes per job spread over `seconds`: a run starts, then each image lands."""
    from orfeas_pipelines.lib.outbox import ImageUpdate, apply_updates

    pause = seconds / EVENT_CHANGES
    time.sleep(pause)
    for job in jobs:
        apply_updates(home, job, "bench-run", [ImageUpdate(f"tile{index}.png", "running") for index in range(EVENT_IMAGES)])
    for index in range(EVENT_IMAGES):
        time.sleep(pause)
        for job in jobs:
            delivered = ImageUpdate(f"tile{index}.png", "succeeded", outputs={"stl": f"tile{index}.stl"}, order=time.time())
            apply_updates(home, job, "bench-run", [delivered])


def _in_child(function, *args):
    """Run a load function in a fresh process and return its result."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_child, args=(results, function, args))
    process.start()
    result = results.get(timeout=args[0]["seconds"] + 120)
    process.join(10)
    return result


def _child(results, function, args) -> None:
    results.put(asyncio.run(function(*args)))


async def _status_load(load: dict, jobs: list[str], clients: int) -> tuple[list[float], float]:
    from orfeas_pipelines.lib.intake.requests import signed_headers

    def request(index: int, count: int) -> bytes:
        target = f"/v1/jobs/{jobs[(index + count) % len(jobs)]}"
        return _request_bytes("GET", target, signed_headers(load["agent_id"], load["secret"], "GET", target))

    return await _closed_loop(load, clients, request, 200, 100_000)


async def _submit_load(load: dict, clients: int) -> tuple[list[float], float]:
    from orfeas_pipelines.client import job_body
    from orfeas_pipelines.lib.intake.requests import signed_headers

    image = _png_of_size(SUBMIT_IMAGE_BYTES)

    def request(index: int, count: int) -> bytes:
        _, content_type, body = job_body(load["agent_id"], load["secret"], [("photo.png", image)], resolution=64)
        headers = signed_headers(load["agent_id"], load["secret"], "POST", "/v1/jobs", hashlib.sha256(body).hexdigest())
        headers["Content-Type"] = content_type
        return _request_bytes("POST", "/v1/jobs", headers, body)

    return await _closed_loop(load, clients, request, 202, 2_000)


async def _closed_loop(load: dict, clients: int, request, expected: int, max_per_client: int) -> tuple[list[float], float]:
    """`clients` connections, each sending `request(index, count)` and awaiting its answer, until the time is up.

    Returns every request's latency (signing excluded) and the phase's wall time.
    """
    started_at = time.perf_counter()
    deadline = started_at + load["seconds"]
    latencies: list[float] = []

    async def client(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", load["port"])
        count = 0
        while time.perf_counter() < deadline and count < max_per_client:
            payload = request(index, count)
            started = time.perf_counter()
            writer.write(payload)
            status, answer = await _read_response(reader)
            latencies.append(time.perf_counter() - started)
            if status != expected:
                raise RuntimeError(f"request answered {status}, not {expected}: {answer[:200]!r}")
            count += 1
        writer.close()

    await asyncio.gather(*(client(index) for index in range(clients)))
    return latencies, time.perf_counter() - started_at


async def _sse_load(load: dict, jobs: list[str], streams: int, ready) -> dict:
    """Open `streams` SSE streams round-robin over the jobs; count each one's events and their lag."""
    from orfeas_pipelines.lib.intake.requests import signed_headers

    counts = [0] * streams
    lags: list[float] = []

    async def stream(index: int, opened: asyncio.Event) -> None:
        target = f"/v1/jobs/{jobs[index % len(jobs)]}/events"
        reader, writer = await asyncio.open_connection("127.0.0.1", load["port"])
        writer.write(_request_bytes("GET", target, signed_headers(load["agent_id"], load["secret"], "GET", target)))
        await reader.readuntil(b"\r\n\r\n")
        buffer = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n\n" in buffer:
                message, buffer = buffer.split(b"\n\n", 1)
                if b"event: " not in message:
                    continue
                counts[index] += 1
                if counts[index] == 1:
                    opened.set()
                else:
                    updated = re.search(rb'"updated_at": "([^"]+)"', message)
                    if updated:
                        lags.append(time.time() - _epoch(updated.group(1).decode()))
                if re.search(rb"event: (succeeded|failed|rejected)", message):
                    writer.close()
                    return
        writer.close()

    events = [asyncio.Event() for _ in range(streams)]
    tasks = [asyncio.create_task(stream(index, events[index])) for index in range(streams)]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in events)), 60)
    ready.set()
    await asyncio.wait_for(asyncio.gather(*tasks), load["seconds"] + 60)
    lags.sort()
    return {
        "events": counts,
        "lag_p50_ms": 1000 * _percentile(lags, 50),
        "lag_p95_ms": 1000 * _percentile(lags, 95),
        "lag_p99_ms": 1000 * _percentile(lags, 99),
    }


def _request_bytes(method: str, target: str, headers: dict, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = _CONTENT_LENGTH.search(head)
    body = await reader.readexactly(int(length.group(1))) if length else b""
    return status, body


def _summary(phase: str, clients: int, latencies: list[float], seconds: float) -> dict:
    ordered = sorted(latencies)
    return {
        "phase": phase,
        "clients": clients,
        "requests": len(ordered),
        "p50_ms": round(1000 * _percentile(ordered, 50), 1),
        "p95_ms": round(1000 * _percentile(ordered, 95), 1),
        "p99_ms": round(1000 * _percentile(ordered, 99), 1),
        "req_per_s": round(len(ordered) / seconds, 1) if seconds else 0.0,
    }


def _percentile(ordered: list[float], percent: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))]


def _epoch(timestamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_healthy(base: str, server: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"orfeas serve exited: {server.stderr.read().decode()[-500:]}")
        try:
            if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("orfeas serve did not answer /v1/health within 60 s")


def _png(size: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGBA", (size, size), (180, 60, 60, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_of_size(target_bytes: int) -> bytes:
    """A noisy RGB PNG of about `target_bytes` (noise does not compress)."""
    import numpy as np
    from PIL import Image

    side = int((target_bytes / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()

"""A real `orfeas serve` app under uvicorn on a free loopback port, per test, and an agent's client."""

import functools
import io
import socket
import threading
import time
from dataclasses import dataclass

import pytest
import uvicorn
from PIL import Image

from orfeas_pipelines.api import ApiSettings, create_app
from orfeas_pipelines.client import OrfeasClient
from orfeas_pipelines.lib.intake.registry import create_agent
from orfeas_pipelines_tests import shapes


@dataclass
class Server:
    url: str
    port: int
    app: object


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(home, settings: ApiSettings = ApiSettings()):
    """Start uvicorn in a thread; returns (Server, stop function)."""
    app = create_app(home, settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    return Server(f"http://127.0.0.1:{port}", port, app), stop


@pytest.fixture
def server_settings() -> ApiSettings:
    return ApiSettings(upload_deadline_seconds=3.0, watch_interval_seconds=0.05)


@pytest.fixture
def server(home, server_settings):
    running, stop = start_server(home, server_settings)
    yield running
    stop()


@pytest.fixture
def bot(home):
    return create_agent(home.agents_file, "bot", rate_per_minute=1000, max_images=4, formats=("stl", "glb"))


@pytest.fixture
def client(server, bot):
    with OrfeasClient(server.url, bot.agent_id, bot.secret) as client:
        yield client


@functools.cache
def star_png() -> bytes:
    return png(shapes.star())


def png(pixels=None) -> bytes:
    """PNG bytes of `pixels` (default: the star, drawn once per session)."""
    if pixels is None:
        return star_png()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()

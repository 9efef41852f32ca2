"""`orfeas serve` as users run it, and `orfeas agent create-key --allow-from`."""

import json
import signal
import subprocess
import sys
import time

import httpx
import pytest

from orfeas_pipelines.cli import main
from orfeas_pipelines_tests.api.conftest import free_port


def test_orfeas_serve_answers_health_and_metrics_and_stops_on_ctrl_c(home):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "orfeas_pipelines.cli", "serve", "--home", str(home.root), "--port", str(port)],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and server.poll() is None, server.stderr.read()
                time.sleep(0.1)
        assert health.json()["status"] == "ok"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "orfeas_queue_images_waiting 0.0" in metrics
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=15)
    assert server.returncode == 0
    assert f"http://127.0.0.1:{port}/v1/health" in stderr


def test_create_key_stores_the_allow_list(home, capsys):
    assert main(["agent", "create-key", "fenced", "--home", str(home.root), "--allow-from", "10.0.0.0/8,192.168.1.7"]) == 0
    capsys.readouterr()
    stored = json.loads(home.agents_file.read_text())["agents"]["fenced"]
    assert stored["allow_from"] == ["10.0.0.0/8", "192.168.1.7/32"]


def test_create_key_refuses_a_bad_network(home, capsys):
    with pytest.raises(SystemExit):
        main(["agent", "create-key", "fenced", "--home", str(home.root), "--allow-from", "10.0.0.0/33"])
    assert "'10.0.0.0/33' is not an address or CIDR network" in capsys.readouterr().err

"""The bash HTTP agent (examples/agent_http.sh, written from the contract alone) submits, follows and downloads."""

import subprocess
import time
from pathlib import Path

import pytest
import trimesh

from orfeas_pipelines.cli import main
from orfeas_pipelines_tests.test_contract_agent import SYSTEM_PATH, create_key, star_and_ring  # noqa: F401 - a fixture

AGENT_SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "agent_http.sh"


def start_agent(server, home, secret: str, images: list[Path], out: Path) -> subprocess.Popen:
    """The script under a bare system environment, so it cannot reach the project or its venv."""
    env = {"PATH": SYSTEM_PATH, "HOME": str(home.root), "FORMATS": "stl,glb", "RESOLUTION": "48", "LANG": "C"}
    return subprocess.Popen(
        ["bash", str(AGENT_SCRIPT), server.url, "shell-bot", secret, str(out), *map(str, images)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_job(home, agent: subprocess.Popen) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and agent.poll() is None:
        jobs = list(home.jobs.iterdir())
        if jobs:
            return jobs[0].name
        time.sleep(0.1)
    raise AssertionError(f"the agent's job was not accepted: {agent.communicate(timeout=5)}")


@pytest.mark.slow
def test_the_bash_http_agent_submits_follows_and_downloads(server, home, star_and_ring, capsys, tmp_path):
    secret = create_key(home, capsys)
    out = tmp_path / "meshes"
    agent = start_agent(server, home, secret, star_and_ring, out)
    job_id = wait_for_job(home, agent)

    assert main(["process", "--home", str(home.root)]) == 0
    stdout, stderr = agent.communicate(timeout=60)
    assert agent.returncode == 0, stderr
    lines = stdout.split()
    assert lines[0] == job_id
    assert sorted(Path(line).name for line in lines[1:]) == ["ring.glb", "ring.stl", "star.glb", "star.stl"]
    for line in lines[1:]:
        assert Path(line).read_bytes() == (home.outbox / job_id / Path(line).name).read_bytes()
        assert trimesh.load(line, force="mesh").is_watertight


def test_the_bash_http_agent_with_a_wrong_secret_is_refused(server, home, star_and_ring, capsys, tmp_path):
    create_key(home, capsys)
    agent = start_agent(server, home, "0" * 64, star_and_ring, tmp_path / "meshes")
    stdout, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 1
    assert "HTTP 401" in stderr and "bad_signature" in stderr
    assert stdout == ""

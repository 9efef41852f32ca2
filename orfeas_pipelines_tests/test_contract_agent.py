"""A bash agent written from shared/CONTRACT.md alone (examples/agent.sh) is accepted and served."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import trimesh
from PIL import Image

from orfeas_pipelines.cli import main
from orfeas_pipelines_tests import shapes

AGENT_SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "agent.sh"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture
def star_and_ring(tmp_path) -> list[Path]:
    folder = tmp_path / "shell-images"
    folder.mkdir()
    paths = [folder / "star.png", folder / "ring.png"]
    Image.fromarray(shapes.star()).save(paths[0])
    Image.fromarray(shapes.ring()).save(paths[1])
    return paths


def create_key(home, capsys) -> str:
    assert main(["agent", "create-key", "shell-bot", "--home", str(home.root), "--formats", "stl,glb"]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def run_agent(home, secret: str, images: list[Path]) -> str:
    """The script under a bare system environment, so it cannot reach the project or its venv."""
    env = {"PATH": SYSTEM_PATH, "HOME": str(home.root), "FORMATS": "stl,glb", "RESOLUTION": "48", "LANG": "C"}
    result = subprocess.run(
        ["bash", str(AGENT_SCRIPT), str(home.root), "shell-bot", secret, *map(str, images)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert (home.inbox / job_id / "job.json").is_file()
    assert [entry.name for entry in home.inbox.iterdir()] == [job_id], "no staging folder left behind"
    return job_id


@pytest.mark.slow
def test_a_job_from_the_bash_agent_is_accepted_and_meshed(home, star_and_ring, capsys):
    secret = create_key(home, capsys)
    job_id = run_agent(home, secret, star_and_ring)

    assert main(["process", "--home", str(home.root)]) == 0
    capsys.readouterr()
    assert main(["status", job_id, "--home", str(home.root)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "succeeded" and status["agent_id"] == "shell-bot"
    assert (home.jobs / job_id / "job.json").is_file()
    assert [image["file"] for image in status["images"]] == ["star.png", "ring.png"]
    for image in status["images"]:
        assert image["state"] == "succeeded" and set(image["outputs"]) == {"stl", "glb"}
        for filename in image["outputs"].values():
            assert trimesh.load(home.outbox / job_id / filename, force="mesh").is_watertight


def test_a_job_from_the_bash_agent_with_a_wrong_secret_is_quarantined(home, star_and_ring, capsys):
    create_key(home, capsys)
    job_id = run_agent(home, "0" * 64, star_and_ring)

    main(["process", "--home", str(home.root)])
    capsys.readouterr()
    reason = json.loads((home.quarantine / job_id / "reason.json").read_text())
    assert reason["code"] == "bad_signature"
    assert main(["status", job_id, "--home", str(home.root)]) == 2, "an unsigned drop never speaks for a job id"

import json
import re
from datetime import datetime, timezone

import pytest

from orfeas_pipelines.lib.intake.manifest import ID_PATTERN, parse_manifest
from orfeas_pipelines.lib.intake.signing import signature_matches
from orfeas_pipelines.lib.intake.submit import SubmitError, write_job
from orfeas_pipelines_tests.lib.intake.drops import make_agent, make_home, png_bytes, sha256_hex

NOW = datetime(2026, 11, 23, 17, 0, 5, tzinfo=timezone.utc)


@pytest.fixture
def setup(tmp_path):
    home = make_home(tmp_path / "home")
    agent = make_agent(home)
    images = tmp_path / "images"
    images.mkdir()
    for name in ("chair.png", "lamp.png"):
        (images / name).write_bytes(png_bytes())
    return home, agent, images


def test_write_job_drops_a_signed_job_atomically(setup):
    home, agent, images = setup
    job_id = write_job(home, [images / "chair.png", images / "lamp.png"], agent.agent_id, agent.secret,
                       formats=("stl", "glb"), resolution=64, seed=3, now=NOW)
    assert re.fullmatch(ID_PATTERN, job_id) and job_id.startswith("20261123T170005")
    assert sorted(path.name for path in home.inbox.iterdir()) == [job_id]
    folder = home.inbox / job_id
    assert sorted(path.name for path in folder.iterdir()) == ["chair.png", "job.json", "lamp.png"]
    manifest = parse_manifest((folder / "job.json").read_bytes())
    assert signature_matches(manifest.signed_fields(), manifest.signature, agent.secret)
    assert manifest.files == ["chair.png", "lamp.png"]
    assert [image.sha256 for image in manifest.images] == [sha256_hex(png_bytes())] * 2
    assert (manifest.output.formats, manifest.params.resolution, manifest.params.seed) == (["stl", "glb"], 64, 3)
    assert manifest.created_at == "2026-11-23T17:00:05Z"


def test_each_job_gets_a_fresh_id_and_nonce(setup):
    home, agent, images = setup
    ids = [write_job(home, [images / "chair.png"], agent.agent_id, agent.secret) for _ in range(5)]
    nonces = {json.loads((home.inbox / job_id / "job.json").read_text())["nonce"] for job_id in ids}
    assert len(set(ids)) == 5 and len(nonces) == 5


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"formats": ("fbx",)}, "formats"),
        ({"resolution": 4}, "resolution"),
        ({"agent_id": "bad agent"}, "agent_id"),
        ({"job_id": "../escape"}, "job_id"),
    ],
)
def test_bad_parameters_are_refused_before_anything_is_written(setup, kwargs, fragment):
    home, agent, images = setup
    arguments = {"agent_id": agent.agent_id, "secret": agent.secret, **kwargs}
    with pytest.raises(SubmitError, match=fragment):
        write_job(home, [images / "chair.png"], **arguments)
    assert list(home.inbox.iterdir()) == []


def test_duplicate_missing_and_badly_named_images_are_refused(setup, tmp_path):
    home, agent, images = setup
    other = tmp_path / "other"
    other.mkdir()
    (other / "chair.png").write_bytes(png_bytes())
    (other / "bad name.png").write_bytes(png_bytes())
    with pytest.raises(SubmitError, match="chair.png given twice"):
        write_job(home, [images / "chair.png", other / "chair.png"], agent.agent_id, agent.secret)
    with pytest.raises(SubmitError, match="missing.png: cannot be read"):
        write_job(home, [images / "missing.png"], agent.agent_id, agent.secret)
    with pytest.raises(SubmitError, match="'bad name.png' is not allowed"):
        write_job(home, [other / "bad name.png"], agent.agent_id, agent.secret)
    with pytest.raises(SubmitError, match="no images"):
        write_job(home, [], agent.agent_id, agent.secret)
    assert list(home.inbox.iterdir()) == []


def test_a_job_id_in_use_is_refused(setup):
    home, agent, images = setup
    write_job(home, [images / "chair.png"], agent.agent_id, agent.secret, job_id="job-1")
    with pytest.raises(SubmitError, match="job-1 is already in use"):
        write_job(home, [images / "chair.png"], agent.agent_id, agent.secret, job_id="job-1")


def test_secret_never_appears_in_errors(setup):
    home, agent, images = setup
    with pytest.raises(SubmitError) as caught:
        write_job(home, [images / "chair.png"], agent.agent_id, agent.secret, formats=("fbx",))
    assert agent.secret not in str(caught.value)


def test_a_full_disk_is_one_line_and_leaves_no_half_job(setup, monkeypatch):
    import errno
    import os

    home, agent, images = setup

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "rename", full)
    with pytest.raises(SubmitError, match=r"cannot be written into .*inbox \(No space left on device\)$"):
        write_job(home, [images / "chair.png"], agent.agent_id, agent.secret, job_id="job-1")
    monkeypatch.undo()
    assert list(home.inbox.iterdir()) == []

import os
import stat

import pytest

from orfeas_pipelines.lib.home import write_bytes_atomic, write_json_atomic


@pytest.fixture
def umask():
    """Sets the process umask for one test and puts the old one back."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode_of(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_outputs_honour_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    write_bytes_atomic(tmp_path / "mesh.stl", b"solid")
    write_json_atomic(tmp_path / "status.json", {"state": "queued"})
    assert mode_of(tmp_path / "mesh.stl") == expected
    assert mode_of(tmp_path / "status.json") == expected


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o000])
def test_secrets_get_exactly_the_mode_asked_for(tmp_path, umask, mask):
    umask(mask)
    write_json_atomic(tmp_path / "agents.json", {"agents": {}}, mode=0o600)
    assert mode_of(tmp_path / "agents.json") == 0o600


def test_a_rewrite_replaces_the_file_and_leaves_no_temporary_behind(tmp_path, umask):
    write_bytes_atomic(tmp_path / "status.json", b"old")
    write_bytes_atomic(tmp_path / "status.json", b"new")
    assert (tmp_path / "status.json").read_bytes() == b"new"
    assert [path.name for path in tmp_path.iterdir()] == ["status.json"]


def test_a_failed_write_leaves_no_temporary_behind(tmp_path, umask):
    with pytest.raises(TypeError):
        write_bytes_atomic(tmp_path / "mesh.stl", "not bytes")
    assert list(tmp_path.iterdir()) == []

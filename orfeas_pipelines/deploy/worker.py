"""A GPU worker: a Celery worker that executes the Dagster runs `CeleryRunLauncher` queues.

The broker, result backend and Celery settings come from the run launcher in the instance's
`dagster.yaml` (`$DAGSTER_HOME`), so the daemon and every worker read one configuration.
One worker serves one GPU (chosen by `CUDA_VISIBLE_DEVICES`) and runs one run at a time, in a
fresh child process per run: the model loads once for the run and its memory is freed after.
Each run is tagged with the worker that executed it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

WORKER_TAG = "orfeas/worker"
DEVICE_TAG = "orfeas/cuda_visible_devices"


def worker_app():
    """The Celery app and queue of the instance's `CeleryRunLauncher`, with dagster-celery's run tasks."""
    from celery.signals import task_prerun
    from dagster import DagsterInstance
    from dagster_celery.config import TASK_EXECUTE_JOB_NAME, TASK_RESUME_JOB_NAME
    from dagster_celery.launcher import CeleryRunLauncher
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_execute_job_task, create_resume_job_task
    from kombu import Exchange, Queue, binding

    config = Path(os.environ.get("DAGSTER_HOME", ".")) / "dagster.yaml"
    if not config.exists():
        raise FileNotFoundError(f"{config}: no instance config; install deploy/dagster.yaml there (see deploy/README.md)")
    with DagsterInstance.get() as instance:
        launcher = instance.run_launcher
        if not isinstance(launcher, CeleryRunLauncher):
            raise RuntimeError(
                f"{instance.root_directory}/dagster.yaml: run_launcher is {type(launcher).__name__}, "
                "not dagster_celery's CeleryRunLauncher (see deploy/dagster.yaml)"
            )
        app = make_app(launcher.app_args())
        queue = launcher.default_queue
    create_execute_job_task(app)
    create_resume_job_task(app)
    # The launcher publishes to exchange `<queue>` with routing key `<queue>.<task>`.
    exchange = Exchange(queue, type="direct")
    app.conf.task_queues = [
        Queue(queue, exchange, bindings=[binding(exchange, routing_key=f"{queue}.{task}")
                                         for task in (TASK_EXECUTE_JOB_NAME, TASK_RESUME_JOB_NAME)])
    ]
    task_prerun.connect(_tag_run_with_worker, weak=False)
    return app, queue


def _tag_run_with_worker(sender=None, task_id=None, task=None, kwargs=None, **_) -> None:
    """Record which worker (and which GPU) executes the run, before it starts.

    Only a run still `STARTING` is tagged: a task Redis delivers again (after a lost broker
    connection) for a run that already started is refused by Dagster, and must not move its tag.
    """
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._serdes import unpack_value

    packed = (kwargs or {}).get("execute_job_args_packed")
    if packed is None:
        return
    run_id = unpack_value(packed).run_id
    with DagsterInstance.get() as instance:
        run = instance.get_run_by_id(run_id)
        if run is None or run.status != DagsterRunStatus.STARTING:
            return
        instance.add_run_tags(
            run_id,
            {WORKER_TAG: task.request.hostname, DEVICE_TAG: os.environ.get("CUDA_VISIBLE_DEVICES", "")},
        )


def run_worker(name: str | None = None, gpu: str | None = None, loglevel: str = "INFO") -> None:
    """Serve the `gpu` queue until stopped: concurrency 1, a fresh child process per run."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    app, queue = worker_app()
    hostname = f"{name or 'gpu' + (gpu or '')}@{socket.gethostname()}"
    app.worker_main(
        [
            "worker",
            f"--queues={queue}",
            "--concurrency=1",
            "--pool=prefork",
            "--max-tasks-per-child=1",
            "--prefetch-multiplier=1",
            "--without-gossip",
            "--without-mingle",
            f"--hostname={hostname}",
            f"--loglevel={loglevel}",
        ]
    )

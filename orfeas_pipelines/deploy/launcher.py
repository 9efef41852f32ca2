"""dagster-celery's run launcher, plus a liveness check of the worker that holds the run.

A worker killed outright (`kill -9`, a machine lost) leaves its Celery task `STARTED` in the
result backend for ever, so `CeleryRunLauncher` would report the run healthy. The worker's
main process answers control requests while its child process executes the run; when the
worker named in the run's tags does not answer, or answers without the run's task (a worker
of the same name restarted), run monitoring fails the run and run retries re-execute it.
"""

from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster_celery.launcher import CeleryRunLauncher
from dagster_celery.tags import DAGSTER_CELERY_TASK_ID_TAG

from orfeas_pipelines.deploy.worker import WORKER_TAG

QUERY_TIMEOUT_SECONDS = 3.0
QUERY_ATTEMPTS = 2


class GpuWorkerRunLauncher(CeleryRunLauncher):
    """Runs on Celery workers; a run whose worker died is reported failed."""

    def check_run_worker_health(self, run) -> CheckRunHealthResult:
        health = super().check_run_worker_health(run)
        worker = run.tags.get(WORKER_TAG)
        if health.status not in (WorkerStatus.RUNNING, WorkerStatus.UNKNOWN) or worker is None:
            return health
        task_id = run.tags.get(DAGSTER_CELERY_TASK_ID_TAG)
        for _ in range(QUERY_ATTEMPTS):
            replies = self.celery.control.inspect(destination=[worker], timeout=QUERY_TIMEOUT_SECONDS).query_task(task_id)
            if replies:
                if task_id in replies.get(worker, {}):
                    return health
                return CheckRunHealthResult(WorkerStatus.FAILED, f"worker {worker} no longer holds this run's task")
        return CheckRunHealthResult(WorkerStatus.FAILED, f"worker {worker} running this run does not answer")

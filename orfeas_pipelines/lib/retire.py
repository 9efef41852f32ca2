"""Which image partitions a long-running deployment can retire, and the archive record of each.

Dagster keeps a dynamic partition for ever, and its UI and every range run pay for the
whole set (docs/SCALE.md: past about 100,000 partitions per asset Dagster is outside what it
supports). A job whose status.json has been terminal for a while will not run again, so its
image partitions can leave Dagster. Before they do, the intake ledger archives each image's
state and outputs; the job's status.json stays the agent's truth and is never touched.
"""

from __future__ import annotations

from datetime import datetime

from orfeas_pipelines.lib.delivery import file_of, job_id_of
from orfeas_pipelines.lib.home import OrfeasHome
from orfeas_pipelines.lib.intake.ledger import RetiredImage
from orfeas_pipelines.lib.outbox import TERMINAL_JOB_STATES, read_status


def settled_images(home: OrfeasHome, keys: list[str], settled_before: datetime) -> list[RetiredImage]:
    """The images of `keys` whose job is terminal and last changed before `settled_before`, in
    key order, with their archive records (one status.json read per job)."""
    by_job: dict[str, list[str]] = {}
    for key in keys:
        by_job.setdefault(job_id_of(key), []).append(key)
    settled = []
    for job_id, job_keys in by_job.items():
        status = read_status(home, job_id)
        if status is None or status["state"] not in TERMINAL_JOB_STATES:
            continue
        if datetime.fromisoformat(status["updated_at"]) >= settled_before:
            continue
        images = {image["file"]: image for image in status.get("images", [])}
        for key in job_keys:
            image = images.get(file_of(key), {})
            settled.append(
                RetiredImage(key, job_id, image.get("state", "unknown"), image.get("outputs", {}), status["updated_at"])
            )
    return settled

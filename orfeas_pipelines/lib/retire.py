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


def settled_images(
    home: OrfeasHome, keys: list[str], settled_before: datetime,
    keep_at_most: int | None = None, pressed_before: datetime | None = None,
) -> list[RetiredImage]:
    """The images of `keys` whose job is terminal and last changed before `settled_before`, with
    their archive records, in key order (one status.json read per job).

    While more than `keep_at_most` keys would stay, the oldest jobs terminal since before
    `pressed_before` go too, whatever their age: keys are in registration order, so a burst of
    images retires the oldest settled ones first instead of outgrowing Dagster's limit.
    """
    by_job: dict[str, list[str]] = {}
    for key in keys:
        by_job.setdefault(job_id_of(key), []).append(key)
    settled = []
    for job_id, job_keys in by_job.items():
        status = read_status(home, job_id)
        if status is None or status["state"] not in TERMINAL_JOB_STATES:
            continue
        changed = datetime.fromisoformat(status["updated_at"])
        crowded = keep_at_most is not None and pressed_before is not None and len(keys) - len(settled) > keep_at_most
        if not (changed < settled_before or (crowded and changed < pressed_before)):
            continue
        images = {image["file"]: image for image in status.get("images", [])}
        for key in job_keys:
            image = images.get(file_of(key), {})
            settled.append(
                RetiredImage(key, job_id, image.get("state", "unknown"), image.get("outputs", {}), status["updated_at"])
            )
    return settled

"""The inbox sensor: verify dropped jobs, register their images, request one batched run.

Intake moves accepted jobs to `jobs/` and appends their images to a durable ledger. The
sensor's cursor is the last ledger sequence number whose images it registered, so it never
grows, and a tick that fails after intake loses nothing: the next tick registers the same
ledger rows again, and the run key stops a second launch. `orfeas process` evaluates this
same sensor with the same stored cursor (`runner.tick_sensor`), so there is one cursor.
"""


import dataclasses
import logging
from datetime import datetime, timezone

import dagster as dg

from orfeas_pipelines.jobs import mesh_job
from orfeas_pipelines.partitions import images_partitions, job_id_of, range_tags
from orfeas_pipelines.resources.home import OrfeasHomeResource

MAX_JOBS_PER_TICK = 500
MAX_IMAGES_PER_RUN = 2000
MAX_LOGGED_REJECTIONS = 50
INTERVAL_SECONDS = 4
"""The daemon checks sensors every 5 s, and a tick is due when this many seconds passed since the last
one began: 4, so that every check ticks (5 would skip every other check by a hair). An idle
tick (empty inbox) costs about 0.2 s of daemon CPU; with 15 s the wait for a tick was most of
an HTTP job's POST-to-succeeded time (docs/BENCHMARKS.md, `orfeas bench api --end-to-end`)."""


class IntakeSettings(dg.ConfigurableResource):
    """Bounds on one tick and the manifest time window."""

    max_jobs_per_tick: int = MAX_JOBS_PER_TICK
    max_images_per_run: int = MAX_IMAGES_PER_RUN
    window_seconds: int = 600


def evaluate_intake(
    orfeas_home: OrfeasHomeResource,
    settings: IntakeSettings,
    cursor: str | None,
    now: datetime | None = None,
    log: logging.Logger | None = None,
    owner: str | None = None,
) -> dg.SensorResult:
    """One tick: intake, then register the next ledger images and request their range run.

    The images are claimed (`lib/intake/claims`) for this evaluation's `owner` (this process by
    default), so the daemon's sensor and `orfeas process` never hand out the same image even
    when one of them evaluates from a cursor the other has since moved.

    The registered images are reported as `source_image` materializations carrying what
    intake verified; the run carries the home in its resource config. The tick's counts and
    each rejection go to `log` (the tick log in the UI) and to the skip reason.
    """
    from orfeas_pipelines.lib.intake.claims import ImageClaims, claims_path, this_process
    from orfeas_pipelines.lib.intake.inbox import process_inbox
    from orfeas_pipelines.lib.intake.ledger import open_ledger
    from orfeas_pipelines.lib.intake.registry import AgentRegistry

    home = orfeas_home.home
    after = int(cursor or 0)
    now = now or datetime.now(timezone.utc)
    limit = settings.max_images_per_run

    with open_ledger(home) as ledger, ImageClaims(claims_path(home)) as claims:
        outcome = process_inbox(
            home,
            AgentRegistry.load(home.agents_file),
            ledger,
            now=now,
            max_jobs=settings.max_jobs_per_tick,
            max_images=limit,
            window_seconds=settings.window_seconds,
        )

        def pick(start: int, before: int | None) -> list:
            images = ledger.images_after(start, limit + 1)
            return _whole_jobs([image for image in images if before is None or image.seq < before], limit)

        claimed = claims.claim_next(after, owner or this_process(), now.timestamp(), pick)
    pending = claimed.images
    summary = (
        f"accepted {len(outcome.accepted)}, rejected {len(outcome.rejected)}, "
        f"deferred {len(outcome.deferred)}, waiting {outcome.remaining}"
    )
    _log_outcome(log or logging.getLogger(__name__), outcome, summary)
    if not pending:
        return dg.SensorResult(skip_reason=f"no new images ({summary})", cursor=str(claimed.through))
    keys = [image.partition_key for image in pending]
    first, last = pending[0].seq, pending[-1].seq
    return dg.SensorResult(
        dynamic_partitions_requests=[images_partitions.build_add_request(keys)],
        asset_events=[
            dg.AssetMaterialization("source_image", partition=image.partition_key, metadata=_facts(image))
            for image in pending
        ],
        run_requests=[
            dg.RunRequest(
                run_key=f"images-{first}-{last}",
                run_config=orfeas_home.run_config(),
                tags={
                    **range_tags(keys),
                    "orfeas/images": str(len(keys)),
                    "orfeas/jobs": str(len({job_id_of(key) for key in keys})),
                    "orfeas/intake": summary,
                },
            )
        ],
        cursor=str(last),
    )


def _facts(image) -> dict:
    """What intake verified about an image, as source_image metadata."""
    return {name: value for name, value in dataclasses.asdict(image).items() if name not in ("partition_key", "seq")}


def _log_outcome(log: logging.Logger, outcome, summary: str) -> None:
    """Counts and rejections of a tick that decided something; idle ticks stay silent."""
    if not (outcome.accepted or outcome.rejected or outcome.deferred):
        return
    log.info(f"intake: {summary}")
    for rejection in outcome.rejected[:MAX_LOGGED_REJECTIONS]:
        log.warning(
            f"rejected {rejection.entry!r}: {rejection.code}: {rejection.message} ({rejection.quarantined_as!r})"
        )
    for held in (deferral for deferral in outcome.deferred if deferral.job_id is None):
        log.warning(f"held {held.entry!r}: {held.reason}")
    if len(outcome.rejected) > MAX_LOGGED_REJECTIONS:
        log.warning(f"... and {len(outcome.rejected) - MAX_LOGGED_REJECTIONS} more rejections (see audit.log)")


def _whole_jobs(images: list, limit: int) -> list:
    """At most `limit` images, never splitting a job across runs (unless one job exceeds it)."""
    if len(images) <= limit:
        return images
    kept = images[:limit]
    cut_job = images[limit].job_id
    whole = [image for image in kept if image.job_id != cut_job]
    return whole or kept


@dg.sensor(
    job=mesh_job,
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Verifies the signed jobs agents drop in inbox/, registers their images as "
    "partitions and requests one batched range run over them per tick. A tick that rejected "
    "drops says so in its skip reason and log.",
)
def inbox_sensor(
    context: dg.SensorEvaluationContext, orfeas_home: OrfeasHomeResource, intake_settings: IntakeSettings
) -> dg.SensorResult:
    """Verifies signed jobs dropped in `inbox/` and requests one batched range run per tick.

    Accepted jobs move to `jobs/`, rejected ones to `quarantine/` with a reason, rate-limited
    ones wait in `inbox/`; every decision is a line in `audit.log`.
    """
    return evaluate_intake(orfeas_home, intake_settings, context.cursor, log=context.log)

"""Which images may be retired: jobs settled long enough ago, and the oldest settled ones when crowded."""

from datetime import datetime, timedelta, timezone

from orfeas_pipelines.lib.retire import settled_images
from orfeas_pipelines_tests.schedules.test_retire import hand_made_job

LATER = timedelta(seconds=5)


def test_only_jobs_terminal_before_the_cutoff_are_settled_and_their_records_say_how_they_ended(home):
    delivered = hand_made_job(home, "delivered", "succeeded", outputs={"stl": "a.stl"})
    failed = hand_made_job(home, "failed", "failed", error="the mesh was empty")
    running = hand_made_job(home, "running", "running")
    now = datetime.now(timezone.utc)

    assert settled_images(home, delivered + failed + running, now - timedelta(days=1)) == []
    settled = settled_images(home, delivered + failed + running + ["unknown-job/a.png"], now + LATER)
    assert [(image.partition_key, image.state, image.outputs) for image in settled] == [
        (delivered[0], "succeeded", {"stl": "a.stl"}),
        (failed[0], "failed", {}),
    ]


def test_when_crowded_the_oldest_settled_jobs_go_first_but_never_those_inside_the_grace(home):
    keys = [key for index in range(4) for key in hand_made_job(home, f"job-{index}", "succeeded")]
    keys += hand_made_job(home, "queued", None)
    now = datetime.now(timezone.utc)
    week_ago = now - timedelta(days=7)

    crowded = settled_images(home, keys, week_ago, keep_at_most=2, pressed_before=now + LATER)
    assert [image.job_id for image in crowded] == ["job-0", "job-1", "job-2"]
    assert settled_images(home, keys, week_ago, keep_at_most=2, pressed_before=now - timedelta(hours=1)) == []
    assert settled_images(home, keys, week_ago, keep_at_most=10, pressed_before=now + LATER) == []

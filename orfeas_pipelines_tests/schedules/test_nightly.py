"""The nightly schedule drains undelivered stretches and re-verifies the latest delivered ones."""

from datetime import datetime, timezone

import dagster as dg

from orfeas_pipelines.schedules.nightly import nightly_drain_and_verify, nightly_run_requests
from orfeas_pipelines.sensors.intake import RANGE_END_TAG, RANGE_START_TAG


def ranges(requests):
    return [(r.tags["orfeas/purpose"], r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in requests]


def test_undelivered_stretches_become_range_runs_and_latest_delivered_are_reverified():
    keys = [f"job{i}/a.png" for i in range(8)]
    delivered = {keys[0], keys[1], keys[4], keys[5], keys[6]}
    requests = nightly_run_requests(keys, delivered, "2026-11-23", reverify_images=2)
    assert ranges(requests) == [
        ("drain", keys[2], keys[3]),
        ("drain", keys[7], keys[7]),
        ("reverify", keys[5], keys[6]),
    ]
    assert len({r.run_key for r in requests}) == 3 and all("2026-11-23" in r.run_key for r in requests)


def test_nothing_registered_skips(instance):
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2026, 11, 23, 2, tzinfo=timezone.utc)
    )
    result = nightly_drain_and_verify(context)
    assert isinstance(result, dg.SkipReason)


def test_schedule_reads_partitions_and_deliveries_from_the_instance(instance):
    instance.add_dynamic_partitions("images", ["a/1.png", "b/1.png"])
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2026, 11, 23, 2, tzinfo=timezone.utc)
    )
    requests = nightly_drain_and_verify(context)
    assert ranges(requests) == [("drain", "a/1.png", "b/1.png")]

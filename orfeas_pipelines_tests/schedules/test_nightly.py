"""The drain: every image neither delivered nor failed for good, and not in a running run."""

from datetime import datetime, timezone

import dagster as dg

from orfeas_pipelines.definitions import defs
from orfeas_pipelines.partitions import RANGE_END_TAG, RANGE_START_TAG
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.schedules.nightly import drain_keys, nightly_drain
from orfeas_pipelines_tests.assets.test_meshes import run_range


def schedule_tick(instance):
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 11, 23, 2, tzinfo=timezone.utc),
        resources={"orfeas_home": OrfeasHomeResource()},
    )
    return nightly_drain(context)


def ranges(requests):
    return [(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in requests]


def test_nothing_registered_skips(home, instance):
    assert isinstance(schedule_tick(instance), dg.SkipReason)


def test_undelivered_stretches_become_range_runs_with_the_home(home, instance):
    keys = [f"job{i}/a.png" for i in range(5)]
    instance.add_dynamic_partitions("images", keys)
    run_range(instance, keys[1:3])  # not accepted jobs: these fail for good
    requests = schedule_tick(instance)
    assert ranges(requests) == [(keys[0], keys[0]), (keys[3], keys[4])]
    assert all(r.run_config == OrfeasHomeResource().run_config() and "2026-11-23" in r.run_key for r in requests)


def test_images_in_a_run_that_is_still_going_are_left_to_it(home, instance):
    keys = [f"job{i}/a.png" for i in range(3)]
    instance.add_dynamic_partitions("images", keys)
    instance.create_run_for_job(
        job_def=defs.resolve_job_def("mesh_job"),
        tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[1]},
        status=dg.DagsterRunStatus.STARTED,
    )
    assert drain_keys(instance) == [keys[2]]

"""The code location loads fast, without torch, and wires what the UI shows."""

import subprocess
import sys

import dagster as dg

from orfeas_pipelines.definitions import defs

HEAVY_MODULES = ("torch", "hy3dgen", "transformers", "diffusers", "trimesh", "skimage")


def test_loading_definitions_imports_no_heavy_module():
    code = (
        "import sys, orfeas_pipelines.definitions;"
        f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_mesh_job_runs_the_one_mesh_step_over_image_ranges():
    job = defs.resolve_job_def("mesh_job")
    assert {key.to_user_string() for key in job.asset_layer.executable_asset_keys} == {"mesh"}
    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("mesh"))
    assert node.partitions_def.name == "images" and node.backfill_policy == dg.BackfillPolicy.single_run()
    assert node.pools == {"gpu"}
    assert graph.get(dg.AssetKey("source_image")).partitions_def.name == "images"
    assert dg.AssetKey("source_image") in node.parent_keys


def test_both_checks_are_per_image_partition_and_the_batch_check_blocks():
    specs = {spec.name: spec for spec in defs.resolve_assets_def("mesh").check_specs}
    assert set(specs) == {"batch_matches_sequential", "mesh_is_valid"}
    assert specs["batch_matches_sequential"].blocking and not specs["mesh_is_valid"].blocking
    assert all(spec.partitions_def.name == "images" and spec.description for spec in specs.values())


def test_sensors_and_schedule_are_described_and_running_by_default():
    sensors = {sensor.name: sensor for sensor in defs.sensors}
    assert set(sensors) == {"inbox_sensor", "job_status_sensor", "report_refresh_sensor"}
    assert all(sensor.default_status == dg.DefaultSensorStatus.RUNNING and sensor.description for sensor in sensors.values())
    schedules = {schedule.name: schedule for schedule in defs.schedules}
    assert set(schedules) == {"nightly_drain", "retire_settled_partitions"}
    assert schedules["nightly_drain"].cron_schedule == "0 2 * * *"
    assert all(schedule.description for schedule in schedules.values())

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


def test_mesh_job_spans_the_three_partitioned_assets_with_single_run_backfills():
    job = defs.resolve_job_def("mesh_job")
    keys = {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert keys == {"source_image", "generated_mesh", "mesh_files"}
    graph = defs.resolve_asset_graph()
    for name in keys:
        node = graph.get(dg.AssetKey(name))
        assert node.partitions_def.name == "images"
        assert node.backfill_policy == dg.BackfillPolicy.single_run()
    assert graph.get(dg.AssetKey("generated_mesh")).pools == {"gpu"}


def test_blocking_and_validity_checks_are_on_the_mesh_asset():
    specs = {spec.name: spec for spec in defs.resolve_assets_def("generated_mesh").check_specs}
    assert set(specs) == {"batch_matches_sequential", "meshes_are_valid"}
    assert specs["batch_matches_sequential"].blocking
    assert all(spec.description for spec in specs.values())


def test_sensors_and_schedule_are_registered_and_running_by_default():
    sensors = {sensor.name: sensor for sensor in defs.sensors}
    assert set(sensors) == {"inbox_sensor", "mesh_run_failed", "mesh_run_succeeded", "mesh_run_canceled"}
    assert all(sensor.default_status == dg.DefaultSensorStatus.RUNNING for sensor in sensors.values())
    [schedule] = defs.schedules
    assert schedule.cron_schedule == "0 2 * * *"

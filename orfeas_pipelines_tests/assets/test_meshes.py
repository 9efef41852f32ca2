"""The three assets through real range runs: one run, many partitions, batched generation."""

import hashlib
from pathlib import Path

import dagster as dg
import pytest
import trimesh

from orfeas_pipelines.assets.meshes import generated_mesh, mesh_files, source_image
from orfeas_pipelines.definitions import defs
from orfeas_pipelines.lib import outbox
from orfeas_pipelines.lib.generation.base import register_generator
from orfeas_pipelines.lib.generation.inflate import InflateGenerator
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.resources.inference import Hunyuan3DSettings, MeshGeneratorResource
from orfeas_pipelines_tests.conftest import register_pending, submit_images


class BatchSensitiveGenerator(InflateGenerator):
    """Shifts every mesh when it shares its batch: what a batching bug looks like."""

    def generate(self, requests):
        results = super().generate(requests)
        if len(requests) > 1:
            for result in results:
                if result.mesh is not None:
                    result.mesh.apply_translation([0.2, 0.0, 0.0])
        return results


register_generator("batch_sensitive", BatchSensitiveGenerator)


def run_range(
    instance, keys, generator="inflate", batch_size=None, raise_on_error=True, run_config=None, **generator_config
):
    return dg.materialize(
        [source_image, generated_mesh, mesh_files],
        instance=instance,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        resources={
            "orfeas_home": OrfeasHomeResource(),
            "mesh_generator": MeshGeneratorResource(
                backend=generator, device="cpu", batch_size=batch_size, **generator_config
            ),
        },
        raise_on_error=raise_on_error,
        run_config=run_config,
    )


def latest_metadata(instance, asset, partition_key):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition_key]), limit=1
    ).records
    return records[0].asset_materialization.metadata


def test_one_range_run_materializes_every_partition_and_delivers(home, agent, instance, image_files):
    job_ids = submit_images(home, agent, image_files, per_job=2)
    sensor_result = register_pending(home, instance)
    keys = list(sensor_result.dynamic_partitions_requests[0].partition_keys)
    assert len(keys) == 4

    result = run_range(instance, keys, batch_size=4)

    assert result.success
    for asset in ("source_image", "generated_mesh", "mesh_files"):
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(keys)
    checks = {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
    assert checks["batch_matches_sequential"].passed
    assert checks["meshes_are_valid"].passed
    assert checks["batch_matches_sequential"].metadata["compared"].value == 4
    batches = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("generated_mesh")]
    assert "| 4 |" in batches[0].materialization.metadata["run_batches"].value
    for job_id in job_ids:
        status = outbox.read_status(home, job_id)
        assert status["state"] == "succeeded"
        assert status["run_ids"] == [result.run_id]
        for image in status["images"]:
            assert set(image["outputs"]) == {"stl", "ply"}
            assert image["metrics"]["valid"] is True and image["metrics"]["faces"] > 0
            mesh = trimesh.load(home.outbox / job_id / image["outputs"]["stl"], force="mesh")
            assert mesh.is_watertight and len(mesh.faces) > 0
            assert (home.outbox / job_id / f"{Path(image['file']).stem}.png").exists()


def test_per_partition_metadata_names_each_image(home, agent, instance, image_files):
    submit_images(home, agent, image_files[:2])
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    run_range(instance, keys)
    for key in keys:
        metadata = latest_metadata(instance, "source_image", key)
        assert metadata["sha256"].value == hashlib.sha256((home.jobs / key).read_bytes()).hexdigest()
        assert latest_metadata(instance, "generated_mesh", key)["vertices"].value > 0


def test_blocking_check_fails_when_batch_differs_from_sequential(home, agent, instance, image_files):
    job_ids = submit_images(home, agent, image_files[:3])
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)

    result = run_range(instance, keys, generator="batch_sensitive", batch_size=3, raise_on_error=False)

    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "batch_matches_sequential")
    assert not check.passed
    distances = check.metadata["distances"].value
    assert set(distances) == set(keys) and all(d > 0.01 for d in distances.values())
    assert not instance.get_materialized_partitions(dg.AssetKey("mesh_files")), "blocked check must stop delivery"
    assert all(outbox.read_status(home, job_id)["state"] == "running" for job_id in job_ids)


def test_a_failed_image_fails_only_itself(home, agent, instance, image_files):
    job_ids = submit_images(home, agent, image_files[:3])
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    (home.jobs / keys[1]).write_bytes(b"corrupted after intake")

    result = run_range(instance, keys)

    assert result.success
    states = [outbox.read_status(home, job_id)["state"] for job_id in job_ids]
    assert states == ["succeeded", "failed", "succeeded"]
    failed = outbox.read_status(home, job_ids[1])["images"][0]
    assert "not a decodable image" in failed["error"]
    validity = next(e for e in result.get_asset_check_evaluations() if e.check_name == "meshes_are_valid")
    assert not validity.passed and keys[1] in validity.metadata["invalid"].value


def test_out_of_memory_halves_the_batch_inside_a_run(home, agent, instance, image_files, monkeypatch):
    submit_images(home, agent, image_files)
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    original = InflateGenerator.generate

    def generate_fitting_two(self, requests):
        if len(requests) > 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, requests)

    monkeypatch.setattr(InflateGenerator, "generate", generate_fitting_two)
    result = run_range(instance, keys, batch_size=4)

    assert result.success
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("generated_mesh"))
    table = event.materialization.metadata["run_batches"].value
    assert table.count("| 2 |") == 2 and "| 4 |" not in table and "True" in table
    assert instance.get_materialized_partitions(dg.AssetKey("mesh_files")) == set(keys)


def test_a_range_streams_through_memory_a_window_at_a_time(home, agent, instance, image_files, monkeypatch):
    submit_images(home, agent, image_files)
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    held = []
    original = InflateGenerator.generate

    def generate_and_record(self, requests):
        held.append(len(requests))
        return original(self, requests)

    monkeypatch.setattr(InflateGenerator, "generate", generate_and_record)
    result = run_range(instance, keys, run_config={"ops": {"generated_mesh": {"config": {"images_in_memory": 3}}}})

    assert result.success
    assert held == [3, 1, 1, 1, 1, 1], "two windows (3 + 1) batched, then the 4 sequential samples"
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    agreement = checks["batch_matches_sequential"]
    assert agreement.passed and agreement.metadata["compared"].value == 4
    assert instance.get_materialized_partitions(dg.AssetKey("mesh_files")) == set(keys)


def test_mesh_job_in_definitions_covers_a_range_in_one_run(home, agent, instance, image_files):
    submit_images(home, agent, image_files[:2])
    sensor_result = register_pending(home, instance)
    request = sensor_result.run_requests[0]
    job = defs.resolve_job_def("mesh_job")
    result = job.execute_in_process(instance=instance, tags=request.tags)
    assert result.success
    assert len(instance.get_runs()) == 1
    assert instance.get_materialized_partitions(dg.AssetKey("mesh_files")) == set(
        sensor_result.dynamic_partitions_requests[0].partition_keys
    )


@pytest.mark.slow
def test_hunyuan3d_backend_selected_by_config_runs_the_same_assets(
    home, agent, instance, image_files, tiny_hunyuan3d_model_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    job_ids = submit_images(home, agent, image_files[:3], resolution=32)
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)

    result = run_range(
        instance,
        keys,
        generator="hunyuan3d",
        batch_size=3,
        hunyuan3d=Hunyuan3DSettings(model_path=tiny_hunyuan3d_model_path, num_inference_steps=3),
    )

    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["batch_matches_sequential"].passed
    assert checks["batch_matches_sequential"].metadata["compared"].value == 3
    mesh_event = next(e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("generated_mesh"))
    assert mesh_event.materialization.metadata["backend"].value == "hunyuan3d"
    assert "| 3 |" in mesh_event.materialization.metadata["run_batches"].value
    delivered = [outbox.read_status(home, job_id)["state"] for job_id in job_ids]
    assert delivered == ["succeeded"] * 3, delivered


def test_a_partition_without_an_accepted_job_fails_only_itself(home, agent, instance, image_files):
    [job_id] = submit_images(home, agent, image_files[:1])
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    instance.add_dynamic_partitions("images", ["ghost-job/missing.png"])

    result = run_range(instance, [*keys, "ghost-job/missing.png"])

    assert result.success
    assert outbox.read_status(home, job_id)["state"] == "succeeded"
    ghost = latest_metadata(instance, "mesh_files", "ghost-job/missing.png")
    assert ghost["state"].value == "failed" and "ghost-job" in ghost["error"].value

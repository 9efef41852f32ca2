"""The mesh asset through real range runs: Dagster's partition status is the truth per image."""

import logging
import threading
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import trimesh
from PIL import Image

from orfeas_pipelines.assets.meshes import BATCH_CHECK, MESH, VALID_CHECK, mesh, _windows
from orfeas_pipelines.definitions import defs
from orfeas_pipelines.lib import delivery, outbox
from orfeas_pipelines.lib.generation.base import register_generator
from orfeas_pipelines.lib.generation.inflate import InflateGenerator
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.resources.inference import Hunyuan3DSettings, MeshGeneratorResource
from orfeas_pipelines.schedules.nightly import drain_keys
from orfeas_pipelines.sensors.status import settle_run
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


class LeakingGenerator(InflateGenerator):
    """Item i of a batch gets item i-1's colour and shape offset: a leak between neighbours only."""

    def generate(self, requests):
        results = super().generate(requests)
        for previous, result in zip(results, results[1:]):
            if previous.mesh is not None and result.mesh is not None:
                result.mesh.apply_translation([0.05 * len(previous.mesh.faces) / max(1, len(result.mesh.faces)), 0, 0])
        return results


class PositionLeakingGenerator(InflateGenerator):
    """Item i of a batch is shifted by i/20: right at position 0, wrong elsewhere."""

    def generate(self, requests):
        results = super().generate(requests)
        for position, result in enumerate(results):
            if result.mesh is not None:
                result.mesh.apply_translation([0.05 * position, 0, 0])
        return results


register_generator("batch_sensitive", BatchSensitiveGenerator)
register_generator("position_leaking", PositionLeakingGenerator)
register_generator("leaking", LeakingGenerator)


def run_range(instance, keys, generator="inflate", batch_size=None, run_config=None, **generator_config):
    return dg.materialize(
        [mesh],
        instance=instance,
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        resources={
            "orfeas_home": OrfeasHomeResource(),
            "mesh_generator": MeshGeneratorResource(backend=generator, device="cpu", batch_size=batch_size, **generator_config),
        },
        raise_on_error=False,
        run_config=run_config,
    )


def check_results(instance, check_name, keys):
    infos = instance.event_log_storage.get_asset_check_partition_info([dg.AssetCheckKey(MESH, check_name)], partition_keys=keys)
    return {info.partition_key: info.latest_execution_status.value for info in infos}


def blank_png(path: Path) -> Path:
    Image.fromarray(np.full((64, 64, 4), 255, dtype=np.uint8)).save(path)
    return path


def test_one_range_run_delivers_and_materializes_every_partition(home, agent, instance, image_files):
    job_ids = submit_images(home, agent, image_files, per_job=2)
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    assert len(keys) == 4 and instance.get_materialized_partitions(dg.AssetKey("source_image")) == set(keys)

    result = run_range(instance, keys, batch_size=4)

    assert result.success
    assert instance.get_materialized_partitions(MESH) == set(keys)
    assert set(check_results(instance, VALID_CHECK, keys).values()) == {"SUCCEEDED"}
    sampled = [e for e in result.get_asset_check_evaluations() if e.check_name == BATCH_CHECK]
    assert len(sampled) == 1 and sampled[0].passed and sampled[0].partition in keys
    for job_id in job_ids:
        status = outbox.read_status(home, job_id)
        assert status["state"] == "succeeded" and status["progress"] == 100
        assert status["run_ids"] == [result.run_id]
        for image in status["images"]:
            assert set(image["outputs"]) == {"stl", "ply"} and image["metrics"]["faces"] > 0
            assert trimesh.load(home.outbox / job_id / image["outputs"]["stl"], force="mesh").is_watertight
            assert (home.outbox / job_id / f"{Path(image['file']).stem}.png").exists()


def test_failed_images_are_not_materialized_and_fail_their_own_check(home, agent, instance, image_files, tmp_path):
    paths = [image_files[0], blank_png(tmp_path / "blank.png"), image_files[1], image_files[2]]
    job_ids = submit_images(home, agent, paths)
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    (home.jobs / keys[2]).write_bytes(b"corrupted after intake")
    instance.add_dynamic_partitions("images", ["ghost-job/missing.png"])
    keys.append("ghost-job/missing.png")

    result = run_range(instance, keys)

    assert result.success
    good = {keys[0], keys[3]}
    assert instance.get_materialized_partitions(MESH) == good
    checks = check_results(instance, VALID_CHECK, keys)
    assert {key for key, state in checks.items() if state == "SUCCEEDED"} == good
    assert {key for key, state in checks.items() if state == "FAILED"} == set(keys) - good
    states = [outbox.read_status(home, job_id)["state"] for job_id in job_ids]
    assert states == ["succeeded", "failed", "failed", "succeeded"]
    assert "no foreground" in outbox.read_status(home, job_ids[1])["images"][0]["error"]
    assert "sha256 does not match the signed manifest" in outbox.read_status(home, job_ids[2])["images"][0]["error"]
    logged = [entry.user_message for entry in instance.all_logs(result.run_id) if entry.level == logging.ERROR]
    assert all(any(line.startswith(key) for line in logged) for key in set(keys) - good), logged
    assert drain_keys(instance) == [], "failed for good: the drain leaves them"


def test_blocking_check_fails_a_batch_sensitive_generator_and_delivers_nothing(home, agent, instance, image_files):
    job_ids = submit_images(home, agent, image_files[:3])
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)

    result = run_range(instance, keys, generator="batch_sensitive", batch_size=3)

    assert not result.success
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == BATCH_CHECK]
    assert not check.passed and check.metadata["chamfer"].value > 0.01
    assert not instance.get_materialized_partitions(MESH), "a failed blocking check stops delivery"
    left = [path for path in home.outbox.rglob("*") if path.is_file() and path.name not in ("status.json", ".status.lock")]
    assert left == [], "files prepared before the check judged the window are removed, temp files included"
    run = instance.get_run_by_id(result.run_id)
    settle_run(instance, run, home, keys)
    for job_id in job_ids:
        image = outbox.read_status(home, job_id)["images"][0]
        assert image["state"] == "failed" and "blocking asset check" in image["error"]


def test_windows_grow_at_the_start_shrink_at_the_end_and_fit_in_memory():
    keys = [f"job{index}/a.png" for index in range(256)]
    windows = _windows(keys, images_in_memory=64)
    sizes = [len(window) for window in windows]
    assert [key for window in windows for key in window] == keys
    assert sizes[:3] == [4, 8, 16] and sizes[-3:] == [16, 8, 4]
    assert max(sizes) <= 21, "three windows in memory at a time"
    assert [len(window) for window in _windows(keys[:32], 64)] == [4, 8, 8, 8, 4]
    assert [len(window) for window in _windows(keys[:3], 64)] == [3]


def test_the_recheck_catches_a_leak_between_neighbours_only(home, agent, instance, image_files):
    submit_images(home, agent, image_files * 2)
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    result = run_range(instance, keys, generator="leaking", batch_size=8, run_config={"ops": {"mesh": {"config": {"recheck_fraction": 0.5}}}})
    assert not result.success
    assert any(not e.passed for e in result.get_asset_check_evaluations() if e.check_name == BATCH_CHECK)


def test_a_sample_riding_in_the_next_window_catches_what_the_first_sequential_check_missed(home, agent, instance, image_files):
    submit_images(home, agent, image_files * 3)
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    result = run_range(instance, keys, generator="position_leaking", batch_size=8,
                       run_config={"ops": {"mesh": {"config": {"recheck_fraction": 0.25}}}})

    assert not result.success
    evaluations = [e for e in result.get_asset_check_evaluations() if e.check_name == BATCH_CHECK]
    assert [e.passed for e in evaluations] == [True, False], "the first window's image at position 0, alone, matches"
    assert evaluations[1].metadata["recheck_batch"].value == 5, "the second window's image rode in the third's batch"
    assert instance.get_materialized_partitions(MESH) == set(keys[:4]), "only the window that passed is delivered"


def test_the_check_passes_a_correct_generator_without_regenerating_a_small_run(home, agent, instance, image_files, monkeypatch):
    submit_images(home, agent, image_files)
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    held = []
    original = InflateGenerator.generate

    def generate_and_record(self, requests):
        held.append(len(requests))
        return original(self, requests)

    monkeypatch.setattr(InflateGenerator, "generate", generate_and_record)
    result = run_range(instance, keys, run_config={"ops": {"mesh": {"config": {"images_in_memory": 6}}}})

    assert result.success
    assert held == [2, 1, 2], "two windows of two; the run's first sampled image generated again alone"
    assert instance.get_materialized_partitions(MESH) == set(keys)


def test_the_next_window_is_decoded_while_this_one_generates(home, agent, instance, image_files, monkeypatch):
    submit_images(home, agent, image_files * 2)
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    original_load, original_generate = delivery.load_requests, InflateGenerator.generate
    decoded: list[list[str]] = []
    second_window_decoded = threading.Event()

    def load_and_record(home, window_keys):
        decoded.append(list(window_keys))
        if len(decoded) == 2:
            second_window_decoded.set()
        return original_load(home, window_keys)

    def generate_once_the_next_window_is_decoded(self, requests):
        if requests[0].key == keys[0]:  # the first window's batch: the second is read meanwhile
            assert second_window_decoded.wait(timeout=30), "the next window was not decoded during generation"
        return original_generate(self, requests)

    monkeypatch.setattr(delivery, "load_requests", load_and_record)
    monkeypatch.setattr(InflateGenerator, "generate", generate_once_the_next_window_is_decoded)
    result = run_range(instance, keys, run_config={"ops": {"mesh": {"config": {"images_in_memory": 6}}}})

    assert result.success
    assert decoded == _windows(keys, 6) and len(decoded) > 2, "each window read once, in order"
    assert instance.get_materialized_partitions(MESH) == set(keys)


def test_an_image_a_retry_can_fix_fails_the_run_and_the_drain_delivers_it(home, agent, instance, image_files, tmp_path, monkeypatch):
    job_ids = submit_images(home, agent, [*image_files[:3], blank_png(tmp_path / "blank.png")])
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    original = InflateGenerator.generate
    poisoned = keys[1]

    def out_of_memory_for_one(self, requests):
        if any(request.key == poisoned for request in requests):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, requests)

    monkeypatch.setattr(InflateGenerator, "generate", out_of_memory_for_one)
    result = run_range(instance, keys, batch_size=4)

    assert not result.success, "a failure a retry can fix fails the run, so run retries see it"
    assert instance.get_materialized_partitions(MESH) == {keys[0], keys[2]}
    settle_run(instance, instance.get_run_by_id(result.run_id), home, keys)
    assert outbox.read_status(home, job_ids[1])["state"] == "failed"
    assert drain_keys(instance) == [poisoned], "the transient failure is drained, the blank image is not"

    monkeypatch.setattr(InflateGenerator, "generate", original)
    again = run_range(instance, drain_keys(instance))
    assert again.success
    settle_run(instance, instance.get_run_by_id(again.run_id), home, [poisoned])
    assert [outbox.read_status(home, job_id)["state"] for job_id in job_ids] == ["succeeded", "succeeded", "succeeded", "failed"]
    assert drain_keys(instance) == []


def test_out_of_memory_halves_the_batch_inside_a_run(home, agent, instance, image_files, monkeypatch):
    submit_images(home, agent, image_files * 3)
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    original = InflateGenerator.generate
    sizes, refused = [], []

    def generate_one_at_a_time(self, requests):
        if len(requests) > 1:
            refused.append(len(requests))
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        sizes.append(len(requests))
        return original(self, requests)

    monkeypatch.setattr(InflateGenerator, "generate", generate_one_at_a_time)
    result = run_range(instance, keys, batch_size=4)

    assert result.success
    assert refused == [4, 2], "halved from the batch that ran out of memory; the later windows remember it"
    assert sizes == [1] * 12
    assert instance.get_materialized_partitions(MESH) == set(keys)


def test_a_retried_run_does_not_deliver_twice(home, agent, instance, image_files):
    job_ids = submit_images(home, agent, image_files[:2])
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    first = run_range(instance, keys)
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1],
            "dagster/root_run_id": first.run_id, "dagster/parent_run_id": first.run_id}
    retry = defs.resolve_job_def("mesh_job").execute_in_process(instance=instance, tags=tags)
    assert retry.success
    delivered = [record.run_id for record in instance.fetch_materializations(MESH, limit=10).records]
    assert delivered == [first.run_id] * 2
    assert all(outbox.read_status(home, job_id)["run_ids"] == [first.run_id] for job_id in job_ids)


def test_mesh_job_in_definitions_covers_a_range_in_one_run(home, agent, instance, image_files):
    submit_images(home, agent, image_files[:2])
    sensor_result = register_pending(home, instance)
    request = sensor_result.run_requests[0]
    job = defs.resolve_job_def("mesh_job")
    result = job.execute_in_process(instance=instance, tags=request.tags, run_config=request.run_config)
    assert result.success
    assert len(instance.get_runs()) == 1
    assert instance.get_materialized_partitions(MESH) == set(sensor_result.dynamic_partitions_requests[0].partition_keys)


@pytest.mark.slow
def test_hunyuan3d_backend_selected_by_config_runs_the_same_asset(
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
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == BATCH_CHECK]
    assert check.passed
    assert instance.get_materialized_partitions(MESH) == set(keys)
    delivered = [outbox.read_status(home, job_id)["state"] for job_id in job_ids]
    assert delivered == ["succeeded"] * 3, delivered


def test_a_suspect_mesh_is_delivered_and_its_check_warns_with_the_reasons(home, agent, instance):
    busy = Path(__file__).parents[1] / "data" / "photos" / "busy" / "astronaut.jpg"
    [job_id] = submit_images(home, agent, [busy], resolution=64)
    [key] = register_pending(home, instance).dynamic_partitions_requests[0].partition_keys

    result = run_range(instance, [key])

    assert result.success and instance.get_materialized_partitions(MESH) == {key}
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == VALID_CHECK]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN and check.metadata["reasons"].value
    [image] = outbox.read_status(home, job_id)["images"]
    assert image["state"] == "succeeded" and image["quality"]["verdict"] == "suspect" and image["quality"]["reasons"]
    assert drain_keys(instance) == []


def test_each_batch_of_a_run_lands_in_the_metrics_store(home, agent, instance, image_files):
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client import CollectorRegistry, generate_latest

    from orfeas_pipelines.lib.metrics import OrfeasCollector
    from orfeas_pipelines.lib.queue import JobTracker

    submit_images(home, agent, image_files)
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    assert run_range(instance, keys, batch_size=2).success
    registry = CollectorRegistry()
    registry.register(OrfeasCollector(home, JobTracker(home)))
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for sample in family.samples}
    counts = [value for (name, labels), value in samples.items() if name.startswith("orfeas_batch_size") and name.endswith("_count")]
    assert sum(counts) == 2, ("two batches of two", samples)

"""The inference resource: lazy generator, batch sizes, per-batch reports, backend config."""

import dagster as dg
import pytest

from orfeas_pipelines.lib.generation.base import GenerationRequest
from orfeas_pipelines.resources.inference import Hunyuan3DSettings, MeshGeneratorResource
from orfeas_pipelines_tests import shapes


def requests(count, resolution=32):
    images = [shapes.star(), shapes.ring(), shapes.disk(), shapes.vase()]
    return [GenerationRequest(key=f"k{i}", image=images[i % 4], resolution=resolution) for i in range(count)]


def test_setup_builds_the_generator_on_the_configured_device():
    resource = MeshGeneratorResource(device="cpu", batch_size=3)
    with dg.build_resources({"mesh_generator": resource}) as built:
        generator = built.mesh_generator.generator
        assert generator.name == "inflate" and str(generator.device) == "cpu"
        reports = []
        results = built.mesh_generator.generate(requests(5), on_batch=reports.append)
    assert [r.key for r in results] == [f"k{i}" for i in range(5)]
    assert all(r.ok for r in results)
    assert [report.batch_size for report in reports] == [3, 2]
    assert all(report.device == "cpu" and report.peak_memory_bytes > 0 for report in reports)


def test_batch_size_override_runs_one_image_per_pass():
    resource = MeshGeneratorResource(device="cpu", batch_size=4)
    reports = []
    resource.generate(requests(3), batch_size=1, on_batch=reports.append)
    assert [report.batch_size for report in reports] == [1, 1, 1]


def test_auto_batch_size_uses_free_memory():
    reports = []
    MeshGeneratorResource(device="cpu").generate(requests(4), on_batch=reports.append)
    assert [report.batch_size for report in reports] == [4]


def test_dtype_is_one_setting_for_every_backend():
    import torch

    assert MeshGeneratorResource(device="cpu", dtype="float64").build_generator().dtype == torch.float64
    assert MeshGeneratorResource(device="cpu").build_generator().dtype == torch.float32
    with pytest.raises(ValueError, match="inflate dtype must be one of"):
        MeshGeneratorResource(device="cpu", dtype="float16").build_generator()


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="unknown generator backend 'nerf'.*hunyuan3d.*inflate"):
        MeshGeneratorResource(backend="nerf").build_generator()


def test_hunyuan3d_model_path_falls_back_to_the_environment(monkeypatch):
    monkeypatch.setenv("ORFEAS_HUNYUAN3D_MODEL_PATH", "/models/Hunyuan3D-2")
    assert Hunyuan3DSettings().options()["model_path"] == "/models/Hunyuan3D-2"
    assert Hunyuan3DSettings(model_path="/elsewhere").options()["model_path"] == "/elsewhere"

"""The hunyuan3d backend on a tiny randomly initialised model: real loading and batching, offline."""

import importlib.abc
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from orfeas_pipelines.lib.batching import generate_in_batches
from orfeas_pipelines.lib.compare import compare_batch_to_sequential
from orfeas_pipelines.lib.generation import hunyuan3d
from orfeas_pipelines.lib.generation.base import GenerationRequest, create_generator
from orfeas_pipelines.lib.meshes import mesh_problems
from orfeas_pipelines_tests import shapes
from orfeas_pipelines_tests.lib.generation.tiny_hunyuan3d import SUBFOLDER

OCTREE = 32
STEPS = 3


def tiny_generator(model_path: str, **options) -> hunyuan3d.Hunyuan3DGenerator:
    return create_generator("hunyuan3d", device="cpu", model_path=model_path, num_inference_steps=STEPS, **options)


def sample_requests(seed: int = 7) -> list[GenerationRequest]:
    images = {
        "star": shapes.star((96, 96), radius=40),
        "ring": shapes.ring((96, 96), outer=40, inner=20),
        "disk": shapes.disk((96, 96), radius=35),
    }
    return [GenerationRequest(key=key, image=image, resolution=OCTREE, seed=seed) for key, image in images.items()]


class _RefuseImport(importlib.abc.MetaPathFinder):
    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.names:
            raise ImportError(f"{fullname} must not be imported by the hunyuan3d backend")
        return None


@pytest.fixture
def offline(monkeypatch) -> list[str]:
    """Every route to a hub or the network fails loudly and is recorded; rembg cannot be imported."""
    import huggingface_hub
    import huggingface_hub.file_download
    import transformers
    from hy3dgen.shapegen import pipelines
    from hy3dgen.shapegen.models.autoencoders import model as vae_model

    calls: list[str] = []

    def refuse(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} called: the hunyuan3d backend must stay offline")

        return call

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for module, attribute in [
        (huggingface_hub, "snapshot_download"),
        (huggingface_hub, "hf_hub_download"),
        (huggingface_hub.file_download, "hf_hub_download"),
        (pipelines, "smart_load_model"),
        (vae_model, "smart_load_model"),
    ]:
        monkeypatch.setattr(module, attribute, refuse(f"{module.__name__}.{attribute}"))
    monkeypatch.setattr(pipelines.Hunyuan3DDiTPipeline, "enable_flashvdm", refuse("enable_flashvdm"))
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse("from_pretrained")))
    real_connect = socket.socket.connect

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            calls.append(f"socket.connect{address}")
            raise AssertionError(f"network connection to {address} attempted")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    for name in ("rembg", "hy3dgen.rembg"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "meta_path", [_RefuseImport({"rembg", "hy3dgen.rembg"}), *sys.meta_path])
    monkeypatch.setattr(hunyuan3d, "_PIPELINES", {})
    return calls


@pytest.mark.slow
def test_loads_offline_and_generates_a_batch_of_valid_meshes(tiny_hunyuan3d_model_path, offline):
    generator = tiny_generator(tiny_hunyuan3d_model_path)
    results = generator.generate(sample_requests())
    tiny_generator(tiny_hunyuan3d_model_path).generate(sample_requests()[:1])

    assert offline == []
    assert "rembg" not in sys.modules
    assert len(hunyuan3d._PIPELINES) == 1, "the weights are loaded once per process"
    assert [result.key for result in results] == ["star", "ring", "disk"]
    for result in results:
        assert result.ok, result.error
        assert mesh_problems(result.mesh) == []
        assert max(result.mesh.extents) == pytest.approx(1.0)
        assert np.allclose(result.mesh.bounds.sum(axis=0), 0.0, atol=1e-6)
        assert result.mesh.volume > 0, "faces wind outwards"
        assert result.metrics["octree_resolution"] == OCTREE
    assert generator.version == "hy3dgen-2.0.2/hunyuan3d-dit-v2-0"


@pytest.mark.slow
def test_batch_and_sequential_give_the_same_meshes(tiny_hunyuan3d_model_path):
    generator = tiny_generator(tiny_hunyuan3d_model_path)
    batched = generate_in_batches(generator, sample_requests(), batch_size=3)
    one_by_one = generate_in_batches(generator, sample_requests(), batch_size=1)
    batch = {result.key: result.mesh for result in batched}
    sequential = {result.key: result.mesh for result in one_by_one}

    agreement = compare_batch_to_sequential(batch, sequential)

    assert agreement.passed, agreement.distances
    assert all(mesh is not None for mesh in batch.values())
    # the check can fail: each item's mesh is its own, so pairing them up wrongly does not match
    shuffled = dict(zip(batch, [batch["ring"], batch["disk"], batch["star"]]))
    assert not compare_batch_to_sequential(shuffled, sequential).passed


@pytest.mark.slow
def test_seed_changes_the_mesh_and_repeating_it_does_not(tiny_hunyuan3d_model_path):
    generator = tiny_generator(tiny_hunyuan3d_model_path)
    first = {result.key: result.mesh for result in generator.generate(sample_requests(seed=1))}
    again = {result.key: result.mesh for result in generator.generate(sample_requests(seed=1))}
    other = {result.key: result.mesh for result in generator.generate(sample_requests(seed=2))}

    assert all(np.array_equal(first[key].vertices, again[key].vertices) for key in first)
    assert not compare_batch_to_sequential(first, other).passed


@pytest.mark.slow
def test_an_opaque_image_gets_the_projects_mask(tiny_hunyuan3d_model_path):
    cut_out = shapes.disk((96, 96), radius=35)
    outside = cut_out[..., 3] < 128
    cut_out[..., 3] = np.where(outside, 0, 255)
    cut_out[outside, :3] = 255
    on_white = cut_out.copy()
    on_white[..., 3] = 255
    generator = tiny_generator(tiny_hunyuan3d_model_path)

    from_alpha, from_mask = generator.generate(
        [GenerationRequest(key="disk", image=image, resolution=OCTREE) for image in (cut_out, on_white)]
    )

    assert from_alpha.ok and from_mask.ok
    assert np.array_equal(from_alpha.mesh.vertices, from_mask.mesh.vertices)
    assert from_mask.metrics["quality"]["verdict"] == "ok" and from_mask.metrics["foreground_fraction"] > 0
    assert from_alpha.metrics["background"] == ["alpha channel"] and np.array_equal(from_alpha.mask, from_mask.mask)


@pytest.mark.slow
def test_items_without_a_surface_or_a_foreground_are_item_errors(tiny_hunyuan3d_model_path):
    blank = np.full((64, 64, 4), 255, dtype=np.uint8)
    batch = [*sample_requests(), GenerationRequest(key="blank", image=blank, resolution=OCTREE)]

    results = tiny_generator(tiny_hunyuan3d_model_path, mc_level=1000.0).generate(batch)

    assert [result.key for result in results] == ["star", "ring", "disk", "blank"]
    assert all(result.mesh is None for result in results)
    assert all(result.error.startswith(f"{result.key}: no surface at mc_level 1000.0") for result in results[:3])
    assert results[3].error.startswith("blank: no foreground found (tried: border colour key")
    assert "alpha channel" in results[3].error and "background: rembg" in results[3].error


def test_a_missing_folder_names_the_files_expected(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        create_generator("hunyuan3d", device="cpu", model_path=str(tmp_path / "nowhere"))

    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere" / SUBFOLDER / "config.yaml") in message
    assert "model.fp16.safetensors" in message and "model.fp16.ckpt" in message


def test_a_missing_weights_file_names_the_files_expected(tmp_path, tiny_hunyuan3d_model_path):
    folder = tmp_path / "Hunyuan3D-2" / SUBFOLDER
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_bytes((_tiny_folder(tiny_hunyuan3d_model_path) / "config.yaml").read_bytes())

    with pytest.raises(FileNotFoundError, match="model.fp16.safetensors"):
        create_generator("hunyuan3d", device="cpu", model_path=str(tmp_path / "Hunyuan3D-2"))


def test_the_model_path_comes_from_the_environment(monkeypatch, tiny_hunyuan3d_model_path):
    monkeypatch.delenv(hunyuan3d.MODEL_PATH_ENV, raising=False)
    with pytest.raises(ValueError, match=hunyuan3d.MODEL_PATH_ENV):
        create_generator("hunyuan3d", device="cpu")

    monkeypatch.setenv(hunyuan3d.MODEL_PATH_ENV, tiny_hunyuan3d_model_path)
    assert create_generator("hunyuan3d", device="cpu").folder == _tiny_folder(tiny_hunyuan3d_model_path)


def test_an_image_encoder_that_would_be_downloaded_is_refused(tmp_path, tiny_hunyuan3d_model_path):
    source = _tiny_folder(tiny_hunyuan3d_model_path)
    folder = tmp_path / "model" / SUBFOLDER
    folder.mkdir(parents=True)
    (folder / "model.fp16.safetensors").symlink_to(source / "model.fp16.safetensors")
    config = yaml.safe_load((source / "config.yaml").read_text())
    del config["conditioner"]["params"]["main_image_encoder"]["kwargs"]["config"]
    config["conditioner"]["params"]["main_image_encoder"]["kwargs"]["version"] = "facebook/dinov2-giant"
    (folder / "config.yaml").write_text(yaml.safe_dump(config))

    with pytest.raises(ValueError, match="main_image_encoder has no inline `config`"):
        create_generator("hunyuan3d", device="cpu", model_path=str(tmp_path / "model"))


def test_a_checkpoint_without_image_encoder_weights_is_refused(tmp_path, tiny_hunyuan3d_model_path):
    import safetensors.torch

    source = _tiny_folder(tiny_hunyuan3d_model_path)
    folder = tmp_path / "model" / SUBFOLDER
    folder.mkdir(parents=True)
    (folder / "config.yaml").symlink_to(source / "config.yaml")
    weights = safetensors.torch.load_file(str(source / "model.fp16.safetensors"))
    without_encoder = {key: value for key, value in weights.items() if not key.startswith("conditioner.")}
    safetensors.torch.save_file(without_encoder, str(folder / "model.fp16.safetensors"))

    with pytest.raises(ValueError, match="no weights for conditioner"):
        create_generator("hunyuan3d", device="cpu", model_path=str(tmp_path / "model"))


@pytest.mark.slow
def test_a_ckpt_checkpoint_loads_too(tmp_path, tiny_hunyuan3d_model_path):
    import safetensors.torch

    source = _tiny_folder(tiny_hunyuan3d_model_path)
    folder = tmp_path / "model" / SUBFOLDER
    folder.mkdir(parents=True)
    (folder / "config.yaml").symlink_to(source / "config.yaml")
    nested: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in safetensors.torch.load_file(str(source / "model.fp16.safetensors")).items():
        part, name = key.split(".", 1)
        nested.setdefault(part, {})[name] = value
    torch.save(nested, folder / "model.fp16.ckpt")

    generator = tiny_generator(str(tmp_path / "model"))
    (result,) = generator.generate(sample_requests()[:1])

    assert generator.weights_path.name == "model.fp16.ckpt"
    assert result.ok, result.error


def test_options_are_checked_and_dtype_follows_the_device(tiny_hunyuan3d_model_path):
    with pytest.raises(ValueError, match="dtype"):
        tiny_generator(tiny_hunyuan3d_model_path, dtype="float8")
    with pytest.raises(ValueError, match="octree_resolution"):
        tiny_generator(tiny_hunyuan3d_model_path, octree_resolution=4)

    assert tiny_generator(tiny_hunyuan3d_model_path).dtype == torch.float32
    on_cuda = hunyuan3d.Hunyuan3DGenerator(torch.device("cuda"), model_path=tiny_hunyuan3d_model_path)
    assert on_cuda.dtype == torch.float16


def test_the_octree_resolution_sets_batch_key_and_memory(tiny_hunyuan3d_model_path):
    generator = tiny_generator(tiny_hunyuan3d_model_path)
    small, large = (GenerationRequest(key="a", image=np.zeros((8, 8, 4), np.uint8), resolution=r) for r in (64, 256))

    assert generator.batch_key(small) != generator.batch_key(large)
    assert generator.item_memory_bytes(large) > generator.item_memory_bytes(small) > 4 * 65**3
    fixed = tiny_generator(tiny_hunyuan3d_model_path, octree_resolution=128)
    assert fixed.batch_key(small) == fixed.batch_key(large)


def test_decoder_passes_keep_their_size_on_cpu_and_grow_with_the_batch_on_cuda(tiny_hunyuan3d_model_path):
    cpu = tiny_generator(tiny_hunyuan3d_model_path, num_chunks=8000)
    cuda = hunyuan3d.Hunyuan3DGenerator(torch.device("cuda"), model_path=tiny_hunyuan3d_model_path, num_chunks=8000)
    assert [cpu._points_per_item_and_pass(size) for size in (1, 8, 9000)] == [8000, 1000, 1]
    assert [cuda._points_per_item_and_pass(size) for size in (1, 8)] == [8000, 8000]


def test_importing_the_backend_imports_neither_torch_nor_hy3dgen():
    code = (
        "import sys, orfeas_pipelines.lib.generation.hunyuan3d; "
        "print(sorted({'torch', 'hy3dgen', 'transformers', 'rembg'} & set(sys.modules)))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


def _tiny_folder(model_path: str) -> Path:
    return Path(model_path) / SUBFOLDER

"""Choosing the remover, the learned remover's loading and call (on a tiny ONNX model built
here with u2net's input/output signature), and the quality verdict's reasons."""

from pathlib import Path

import numpy as np
import pytest

from orfeas_pipelines.lib.background import LearnedRemover, classic_mask, create_remover
from orfeas_pipelines.lib.generation.base import GenerationRequest, create_generator
from orfeas_pipelines.lib.masks import find_foreground
from orfeas_pipelines.lib.quality import quality_verdict
from orfeas_pipelines_tests import shapes

MODEL_SIDE = 32


def tiny_u2net(path: Path) -> Path:
    """A randomly initialised 3 -> 1 channel convolution with u2net's signature: input
    `input.image` (1, 3, S, S) float32, first output (1, 1, S, S). Its bias favours bright
    pixels, so a light object on a dark ground is found."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).normal(0.2, 0.02, (1, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input.image", "weight"], ["logits"], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", ["logits"], ["d0"]),
        ],
        "tiny_u2net",
        [helper.make_tensor_value_info("input.image", TensorProto.FLOAT, [1, 3, MODEL_SIDE, MODEL_SIDE])],
        [helper.make_tensor_value_info("d0", TensorProto.FLOAT, [1, 1, MODEL_SIDE, MODEL_SIDE])],
        [numpy_helper.from_array(weights, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return tiny_u2net(tmp_path_factory.mktemp("model") / "u2net.onnx")


def light_disk_on_dark() -> np.ndarray:
    return shapes.disk((96, 96), radius=30, colour=(230, 230, 230), background=(20, 20, 20))


def test_auto_is_classic_without_a_model_and_learned_with_one(tiny_model, monkeypatch):
    monkeypatch.delenv("ORFEAS_BACKGROUND_MODEL_PATH", raising=False)
    assert create_remover("auto") is classic_mask
    assert isinstance(create_remover("auto", str(tiny_model)), LearnedRemover)
    monkeypatch.setenv("ORFEAS_BACKGROUND_MODEL_PATH", str(tiny_model))
    assert isinstance(create_remover("auto"), LearnedRemover)
    assert create_remover("classic") is classic_mask


def test_bad_choices_and_missing_files_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("ORFEAS_BACKGROUND_MODEL_PATH", raising=False)
    with pytest.raises(ValueError, match="background must be one of"):
        create_remover("magic")
    with pytest.raises(ValueError, match="needs background_model_path"):
        create_remover("rembg")
    missing = tmp_path / "u2net.onnx"
    with pytest.raises(FileNotFoundError) as error:
        create_remover("rembg", str(missing))
    assert str(missing) in str(error.value) and "nothing is downloaded" in str(error.value)
    assert "\n" not in str(error.value)


def test_the_learned_remover_loads_the_file_and_finds_the_object(tiny_model):
    remover = LearnedRemover(str(tiny_model))
    assert remover.side == MODEL_SIDE
    foreground = find_foreground(light_disk_on_dark(), remover)
    truth = shapes.mask_of(shapes.disk((96, 96), radius=30))
    found = foreground.image[..., 3] >= 128
    assert (found & truth).sum() / (found | truth).sum() >= 0.8
    assert foreground.tried == ("learned remover u2net.onnx",)


def test_both_backends_take_the_remover_from_config(tiny_model):
    generator = create_generator("inflate", device="cpu", background="rembg", background_model_path=str(tiny_model))
    (result,) = generator.generate([GenerationRequest(key="disk", image=light_disk_on_dark(), resolution=32)])
    assert result.ok and result.metrics["background"] == ["learned remover u2net.onnx"]
    assert result.mask is not None and result.mask.dtype == bool and result.mask.any()
    assert result.metrics["quality"]["verdict"] in ("ok", "suspect")
    assert 0 < result.metrics["foreground_fraction"] < 1


def test_a_plain_background_is_keyed_and_a_photo_like_one_goes_to_grabcut():
    plain = shapes.vase(size=(120, 120), height=90, background=(240, 240, 240))
    assert classic_mask(plain[..., :3]).tried == ("border colour key (plain border)",)
    rows = np.linspace(60, 200, 120)[:, None, None]
    gradient = np.broadcast_to(rows, (120, 120, 3)).astype(np.uint8).copy()
    vase = shapes.vase(size=(120, 120), height=90, background=None)
    photo = np.where(vase[..., 3:] >= 128, vase[..., :3], gradient)
    decision = classic_mask(np.ascontiguousarray(photo))
    assert decision.tried[-1].startswith("GrabCut")
    truth = vase[..., 3] >= 128
    found = find_foreground(np.dstack([photo, np.full((120, 120), 255, np.uint8)])).image[..., 3] >= 128
    assert (found & truth).sum() / (found | truth).sum() >= 0.9


def disk_mask(size: int, radius: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    cy, cx = centre or (size / 2, size / 2)
    rows, cols = np.mgrid[:size, :size]
    return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2


def scattered_dots() -> np.ndarray:
    """25 separate squares on a 10 x 10 board (every other cell of every other row)."""
    board = np.zeros((10, 10), bool)
    board[::2, ::2] = True
    return board


@pytest.mark.parametrize(
    "mask, confidence, reason",
    [
        (disk_mask(100, 5), 1.0, "tiny foreground"),
        (np.ones((100, 100), bool) & ~disk_mask(100, 10, (5, 5)), 1.0, "huge foreground"),
        (np.kron(scattered_dots(), np.ones((10, 10), bool)), 1.0, "many fragments"),
        (disk_mask(100, 60, (100, 50)), 1.0, "hugs the border"),
        (disk_mask(100, 40) & ~disk_mask(100, 10, (35, 35)) & ~disk_mask(100, 10, (65, 65)), 1.0, "inverted"),
        (disk_mask(100, 30), 0.5, "low mask confidence"),
    ],
)
def test_each_suspect_reason(mask, confidence, reason):
    verdict = quality_verdict(mask, confidence)
    assert verdict["verdict"] == "suspect" and any(reason in text for text in verdict["reasons"]), verdict


def test_one_clear_object_is_ok():
    assert quality_verdict(disk_mask(100, 30), 0.95) == {"verdict": "ok", "reasons": []}

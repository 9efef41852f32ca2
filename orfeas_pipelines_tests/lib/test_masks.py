import numpy as np
import pytest
import torch

from orfeas_pipelines.lib.masks import ensure_alpha, foreground_mask, foreground_masks
from orfeas_pipelines_tests import shapes


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_alpha_channel_is_the_mask_when_it_means_something():
    image = shapes.star(size=(200, 180), centre=(90, 100), radius=70)
    assert np.array_equal(foreground_mask(image), shapes.mask_of(image))


@pytest.mark.parametrize(
    "draw, background",
    [
        (shapes.vase, (70, 110, 90)),
        (shapes.mushroom, (40, 40, 40)),
        (shapes.star, (250, 250, 250)),
        (shapes.ring, (30, 60, 200)),
    ],
)
def test_plain_background_is_keyed_out(draw, background):
    truth = shapes.mask_of(draw(background=None))
    keyed = foreground_mask(draw(background=background))
    assert iou(keyed, truth) >= 0.97


def test_noisy_background_is_keyed_out():
    image = shapes.mushroom(size=(220, 240), scale=0.8, background=(200, 190, 120))
    noise = np.random.default_rng(3).normal(0, 4, image.shape[:2] + (3,))
    image[..., :3] = np.clip(image[..., :3] + noise, 0, 255).astype(np.uint8)
    truth = shapes.mask_of(shapes.mushroom(size=(220, 240), scale=0.8, background=None))
    assert iou(foreground_mask(image), truth) >= 0.95


def test_sizeable_parts_are_kept_and_specks_dropped():
    big = shapes.disk((200, 120), centre=(60, 60), radius=45)
    second = shapes.disk((200, 120), centre=(150, 60), radius=20)
    speck = shapes.disk((200, 120), centre=(190, 110), radius=4)
    mask = foreground_mask(np.maximum(np.maximum(big, second), speck))
    assert mask[60, 60] and mask[60, 150] and not mask[110, 190]
    assert mask.sum() == shapes.mask_of(big).sum() + shapes.mask_of(second).sum()


def test_small_holes_are_filled_and_a_rings_hole_is_kept():
    image = shapes.disk((160, 160), radius=60)
    image[78:82, 78:82, 3] = 0
    assert foreground_mask(image)[80, 80]
    ring = shapes.ring(size=(160, 160), outer=70, inner=25)
    assert not foreground_mask(ring)[80, 80]


def test_batched_core_gives_the_same_masks_as_one_at_a_time():
    images = [
        shapes.star(size=(96, 96), radius=40),
        shapes.vase(size=(96, 96), height=80),
        shapes.ring(size=(96, 96), outer=40, inner=15),
    ]
    batch = torch.stack([torch.tensor(image).permute(2, 0, 1).float() / 255 for image in images])
    masks = foreground_masks(batch).numpy()
    for image, mask in zip(images, masks):
        assert np.array_equal(mask, foreground_mask(image))


def test_ensure_alpha_keeps_a_meaningful_alpha_and_adds_one_otherwise():
    star = shapes.star(size=(100, 100), radius=40)
    assert ensure_alpha(star) is star
    vase = shapes.vase(size=(100, 100), height=80)
    assert (vase[..., 3] == 255).all()
    with_alpha = ensure_alpha(vase)
    assert with_alpha[0, 0, 3] == 0 and with_alpha[50, 50, 3] == 255
    assert np.array_equal(with_alpha[..., :3], vase[..., :3])


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="RGBA uint8"):
        foreground_mask(np.zeros((10, 10, 3), dtype=np.uint8))


def test_large_batches_are_segmented_in_chunks_with_the_same_result(monkeypatch):
    import orfeas_pipelines.lib.masks as masks

    images = [shapes.star(size=(64, 64), radius=28), shapes.ring(size=(64, 64), outer=30, inner=12)] * 3
    batch = torch.stack([torch.tensor(image).permute(2, 0, 1).float() / 255 for image in images])
    whole = foreground_masks(batch)
    monkeypatch.setattr(masks, "CHUNK_PIXELS", 2 * 64 * 64)
    assert torch.equal(foreground_masks(batch), whole)
    assert torch.equal(whole[0], whole[2]) and not torch.equal(whole[0], whole[1])

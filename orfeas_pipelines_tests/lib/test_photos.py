"""The measured goals of docs/QUALITY.md on the labelled photo set, at the default settings."""

import numpy as np
import pytest
import torch

from orfeas_pipelines.lib.generation.inflate import _onto_grid
from orfeas_pipelines.lib.masks import find_foreground, foreground_masks
from orfeas_pipelines_tests.lib.photo_set import busy_photos, composite_photos, iou, product_photos


def found_alpha(image: np.ndarray) -> np.ndarray:
    return find_foreground(image).image[..., 3] >= 128


def test_every_product_photo_gets_one_plausible_object_matching_its_label():
    photos = product_photos()
    foregrounds = [find_foreground(photo.image) for photo in photos]
    assert all(0.03 <= foreground.fraction <= 0.9 for foreground in foregrounds)
    scores = {photo.name: iou(fg.image[..., 3] >= 128, photo.label) for photo, fg in zip(photos, foregrounds)}
    assert sum(score >= 0.9 for score in scores.values()) >= 0.9 * len(photos), scores


def test_composites_over_real_backgrounds_match_their_labels():
    photos = composite_photos()
    scores = {photo.name: iou(found_alpha(photo.image), photo.label) for photo in photos}
    assert sum(score >= 0.85 for score in scores.values()) >= 0.8 * len(photos), scores


def test_busy_scenes_are_never_a_silent_ok():
    for photo in busy_photos():
        foreground = find_foreground(photo.image)
        assert not foreground.found or foreground.quality["verdict"] == "suspect", (photo.name, foreground.quality)


@pytest.mark.parametrize("name", ["apple", "windows_logo", "horse", "coffee"])
def test_the_same_photo_gives_the_same_object_at_128_and_256(name):
    """Each grid's mask, mapped back onto the photo, is the same object (IoU >= 0.95)."""
    photo = next(photo for photo in product_photos() + busy_photos() if photo.name == name)
    with_alpha = find_foreground(photo.image).image
    height, width = photo.image.shape[:2]
    on_photo = []
    for resolution in (128, 256):
        plane, valid = _onto_grid(with_alpha, resolution, torch.device("cpu"), torch.float32)
        grid = foreground_masks(plane[None], valid[None])[0]
        rows, cols = torch.nonzero(valid, as_tuple=True)
        crop = grid[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].float()[None, None]
        back = torch.nn.functional.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
        on_photo.append(back[0, 0].numpy() >= 0.5)
    assert iou(*on_photo) >= 0.95


def test_a_photo_mesh_carries_its_verdict_fraction_and_mask():
    from orfeas_pipelines.lib.generation.base import GenerationRequest, create_generator

    apple = next(photo for photo in product_photos() if photo.name == "apple")
    (result,) = create_generator("inflate", device="cpu").generate([GenerationRequest("apple", apple.image, 64)])
    assert result.ok and result.metrics["quality"] == {"verdict": "ok", "reasons": []}
    assert result.mask.dtype == bool and result.mask.shape == (128, 128)
    assert result.metrics["foreground_fraction"] == pytest.approx(result.mask.mean())
    assert iou(result.mask, find_foreground(apple.image).mask) == 1.0


def test_the_mask_is_deterministic():
    photo = composite_photos()[0]
    assert np.array_equal(find_foreground(photo.image).mask, find_foreground(photo.image).mask)

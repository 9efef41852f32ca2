"""The labelled photo set (orfeas_pipelines_tests/data/photos/, see its README.md).

Product photos come with hand labels; composites are made here, deterministically, by
laying a labelled cut-out over a real photo background that is given a brightness
gradient or a vignette; busy scenes have no label (their verdict is what is checked).

`python -m orfeas_pipelines_tests.lib.photo_set` prints the table of docs/QUALITY.md: each
image's mask IoU, verdict, and the background removal's share of generation time at 128.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "photos"
COMPOSITE_SIDE = 224
CUTOUT_SIDE = 140


@dataclass(frozen=True)
class LabelledPhoto:
    name: str
    image: np.ndarray
    """RGBA uint8, opaque."""
    label: np.ndarray | None
    """Bool mask of the image's size, or None for a busy scene."""


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks."""
    return float((a & b).sum() / max(1, (a | b).sum()))


def product_photos() -> list[LabelledPhoto]:
    return [_labelled(path) for path in sorted((PHOTOS / "product").glob("*.jpg"))]


def busy_photos() -> list[LabelledPhoto]:
    return [LabelledPhoto(path.stem, _rgba(path), None) for path in sorted((PHOTOS / "busy").glob("*.jpg"))]


COMPOSITES = [
    ("horse", "brick", "gradient"),
    ("happy_fish", "gravel", "vignette"),
    ("opencv_logo", "grass", "gradient"),
    ("apple", "home", "vignette"),
    ("windows_logo", "fruits", "gradient"),
    ("smarties", "brick", "vignette"),
    ("skimage_logo", "gravel", "gradient"),
    ("retina", "home", "gradient"),
    ("orange", "starry_night", "vignette"),
    ("horse", "fruits", "vignette"),
]
"""(cut-out, background, lighting): every product over textures and clutter."""


def composite_photos() -> list[LabelledPhoto]:
    return [_composite(cutout, background, lighting) for cutout, background, lighting in COMPOSITES]


def _labelled(path: Path) -> LabelledPhoto:
    label = np.asarray(Image.open(path.with_name(f"{path.stem}.mask.png")), dtype=bool)
    return LabelledPhoto(path.stem, _rgba(path), label)


def _rgba(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGBA"), dtype=np.uint8).copy()


def _composite(cutout_name: str, background_name: str, lighting: str) -> LabelledPhoto:
    """The cut-out, scaled to CUTOUT_SIDE and placed off-centre, over the lit background."""
    cutout = _labelled(PHOTOS / "product" / f"{cutout_name}.jpg")
    rows, cols = np.nonzero(cutout.label)
    box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    rgba = cutout.image.copy()
    rgba[..., 3] = np.where(cutout.label, 255, 0)
    piece = Image.fromarray(rgba).crop(box)
    piece.thumbnail((CUTOUT_SIDE, CUTOUT_SIDE), Image.Resampling.LANCZOS)
    background = Image.open(PHOTOS / "backgrounds" / f"{background_name}.jpg").convert("RGB")
    background = background.resize((COMPOSITE_SIDE, COMPOSITE_SIDE), Image.Resampling.LANCZOS)
    lit = np.asarray(background, dtype=np.float32) * _lighting(lighting)[..., None]
    canvas = Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8)).convert("RGBA")
    offset = ((COMPOSITE_SIDE - piece.width) // 2 + 12, (COMPOSITE_SIDE - piece.height) // 2 - 8)
    canvas.alpha_composite(piece, offset)
    label = np.zeros((COMPOSITE_SIDE, COMPOSITE_SIDE), dtype=bool)
    label[offset[1] : offset[1] + piece.height, offset[0] : offset[0] + piece.width] = np.asarray(piece)[..., 3] >= 128
    image = np.asarray(canvas, dtype=np.uint8).copy()
    image[..., 3] = 255
    return LabelledPhoto(f"{cutout_name}_on_{background_name}_{lighting}", image, label)


def _lighting(kind: str) -> np.ndarray:
    """A multiplicative light field: a diagonal brightness gradient or a dark-cornered vignette."""
    axis = np.linspace(-1.0, 1.0, COMPOSITE_SIDE, dtype=np.float32)
    if kind == "gradient":
        return 0.55 + 0.8 * (axis[:, None] + axis[None, :] + 2.0) / 4.0
    return 1.15 - 0.6 * (axis[:, None] ** 2 + axis[None, :] ** 2) / 2.0


def report(resolution: int = 128, repeats: int = 3) -> None:
    """Per image: IoU with the label, verdict and reasons, and the best-of-`repeats` seconds of
    background removal alone and of the whole `inflate` generation (which includes it)."""
    from orfeas_pipelines.lib.generation.base import GenerationRequest, create_generator
    from orfeas_pipelines.lib.masks import find_foreground

    generator = create_generator("inflate", device="cpu")
    totals = {"mask": 0.0, "generation": 0.0}
    print(f"| set | image | IoU | verdict | mask ms | generation ms (R={resolution}) |")
    print("|---|---|---|---|---|---|")
    for group, photos in (("product", product_photos()), ("composite", composite_photos()), ("busy", busy_photos())):
        for photo in photos:
            foreground = find_foreground(photo.image)
            request = GenerationRequest(key=photo.name, image=photo.image, resolution=resolution)
            (result,) = generator.generate([request])
            mask_seconds = _best_seconds(lambda: find_foreground(photo.image), repeats)
            generation_seconds = _best_seconds(lambda: generator.generate([request]), repeats)
            totals["mask"] += mask_seconds
            totals["generation"] += generation_seconds
            found = foreground.image[..., 3] >= 128
            score = "-" if photo.label is None else f"{iou(found, photo.label):.3f}"
            verdict = result.metrics["quality"] if result.ok else {"verdict": "error", "reasons": [result.error]}
            outcome = " ".join([verdict["verdict"], *(f"({reason})" for reason in verdict["reasons"])])
            timings = f"{mask_seconds * 1e3:.0f} | {generation_seconds * 1e3:.0f}"
            print(f"| {group} | {photo.name} | {score} | {outcome} | {timings} |")
    share = totals["mask"] / totals["generation"]
    print(f"\nbackground removal {totals['mask']:.2f} s of {totals['generation']:.2f} s generation: {share:.1%}")


def _best_seconds(call, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


if __name__ == "__main__":
    report()

"""Background removal for photos: which pixels of an opaque image show the object.

The mask is decided once, on the image scaled to WORKING_SIDE pixels on its longest side,
so the same photo gives the same object at every grid resolution; callers resample it.

`classic` (weight-free, the default) combines two cues, chosen by measurement on the
labelled photo set in `orfeas_pipelines_tests/data/photos/` (see docs/QUALITY.md):
- the border-colour key: pixels far from the median border colour, with the threshold
  above the border's own spread; used alone where the border is plain (exact there);
- otherwise OpenCV's GrabCut (colour models of object and background refined with a graph
  cut), seeded with the image border as certain background and a centre ellipse (plus the
  key's pixels when the key found a plausible object) as probable object.
`rembg` runs a learned salient-object model (u2net, isnet-general-use, BiRefNet ONNX)
from a local file; `auto` is `rembg` when a model file is configured, else `classic`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

BACKGROUND_METHODS = ("auto", "classic", "rembg")
MODEL_PATH_ENV = "ORFEAS_BACKGROUND_MODEL_PATH"

WORKING_SIDE = 128
"""Longest side (pixels) the mask is decided at, whatever the grid resolution: GrabCut's
cost grows with the pixels; 112 to 144 score the same on the photo set (docs/QUALITY.md)."""

KEY_SIDE = 512
"""Longest side the colour key is evaluated at on a plain background (it is cheap there)."""

BORDER_STRIP = 2
"""Pixels along the image edge that GrabCut takes as certain background."""

GRABCUT_ITERATIONS = 2

MIN_COLOUR_DISTANCE = 0.12
"""Smallest RGB distance (0..1 per channel) from the background colour that counts as object."""

BORDER_NOISE_FACTOR = 4.0
"""The key's threshold also stays this many times above the border's own colour spread."""

BORDER_SPREAD_QUANTILE = 0.75

PLAIN_BORDER_SPREAD = 0.03
"""A border whose colours spread less than this is plain: the colour key alone seeds GrabCut."""

PLAUSIBLE_KEY_FRACTION = (0.01, 0.9)
"""A colour-key mask covering a fraction of the image in this range seeds GrabCut."""

LIGHTNESS_WEIGHT = 0.5
"""GrabCut sees CIELAB with lightness halved, so an object's shadowed side stays nearer its
lit side than a dark background of another hue (OpenCV's orange: IoU 0.66 -> 0.93)."""

CENTRE_PRIOR_RADII = (0.35, 0.35)
"""Half-axes of the centre ellipse (fractions of width and height) seeded as probable object."""


@dataclass(frozen=True)
class MaskDecision:
    """A foreground mask (at working size, or finer), what produced it and how sure it is (0..1)."""

    mask: np.ndarray
    tried: tuple[str, ...]
    confidence: float


def working_size(height: int, width: int, side: int = WORKING_SIDE) -> tuple[int, int]:
    """(width, height) scaled so the longest side is `side` pixels (OpenCV's order)."""
    scale = side / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def working_image(rgb: np.ndarray, side: int = WORKING_SIDE) -> np.ndarray:
    """The uint8 image scaled (area-averaged) so its longest side is `side` pixels."""
    import cv2

    size = working_size(*rgb.shape[:2], side)
    return cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)


Remover = Callable[[np.ndarray], MaskDecision]
"""Turns an RGB uint8 image (its own size) into a MaskDecision."""


def create_remover(method: str = "auto", model_path: str | None = None) -> Remover:
    """The configured remover; `auto` is `rembg` when a model file is set, else `classic`.

    The model path falls back to `$ORFEAS_BACKGROUND_MODEL_PATH`; a missing file fails here,
    at set-up, with one line naming it.
    """
    if method not in BACKGROUND_METHODS:
        raise ValueError(f"background must be one of {BACKGROUND_METHODS}, got {method!r}")
    model_path = model_path or os.environ.get(MODEL_PATH_ENV)
    if method == "classic" or (method == "auto" and not model_path):
        return classic_mask
    if not model_path:
        raise ValueError(f"background 'rembg' needs background_model_path (or ${MODEL_PATH_ENV}): a local .onnx file")
    return LearnedRemover(model_path)


def classic_mask(image_rgb: np.ndarray) -> MaskDecision:
    """The weight-free decision: the colour key on a plain border, else GrabCut."""
    rgb = working_image(image_rgb)
    key, border_spread = colour_key(rgb)
    fraction = float(key.mean())
    key_plausible = PLAUSIBLE_KEY_FRACTION[0] <= fraction <= PLAUSIBLE_KEY_FRACTION[1]
    if key_plausible and border_spread <= PLAIN_BORDER_SPREAD:
        fine = working_image(image_rgb, min(KEY_SIDE, max(image_rgb.shape[:2])))
        fine_key = colour_key(fine)[0]
        tried = ("border colour key (plain border)",)
        return MaskDecision(mask=fine_key, tried=tried, confidence=colour_separation(fine, fine_key))
    if key_plausible:
        seed, seeded_from = key | centre_prior(rgb.shape[:2]), "colour key and the image centre"
    else:
        seed, seeded_from = centre_prior(rgb.shape[:2]), "image centre"
    mask = grabcut(rgb, seed)
    tried = ("border colour key", f"GrabCut seeded from the {seeded_from}")
    return MaskDecision(mask=mask, tried=tried, confidence=colour_separation(rgb, mask))


def colour_key(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """Pixels whose colour is far from the median border colour, and the border's colour spread.

    The spread is a quantile of the border pixels' distances to that colour, so noise and
    JPEG raise the threshold while parts of the object touching the border do not.
    """
    pixels = rgb.astype(np.float32) / 255.0
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = np.median(border, axis=0)
    spread = float(np.quantile(np.linalg.norm(border - background, axis=1), BORDER_SPREAD_QUANTILE))
    threshold = max(spread * BORDER_NOISE_FACTOR, MIN_COLOUR_DISTANCE)
    return np.linalg.norm(pixels - background, axis=2) > threshold, spread


def centre_prior(shape: tuple[int, int]) -> np.ndarray:
    """A centred ellipse: where a photographed object usually is."""
    height, width = shape
    rows = (np.arange(height) + 0.5 - height / 2) / (height * CENTRE_PRIOR_RADII[1])
    cols = (np.arange(width) + 0.5 - width / 2) / (width * CENTRE_PRIOR_RADII[0])
    return rows[:, None] ** 2 + cols[None, :] ** 2 <= 1.0


def grabcut(rgb: np.ndarray, probable_object: np.ndarray) -> np.ndarray:
    """GrabCut (on lightness-damped CIELAB) with the border strip as certain background and
    `probable_object` seeded as object."""
    import cv2

    seeds = np.where(probable_object, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    seeds[:BORDER_STRIP] = seeds[-BORDER_STRIP:] = cv2.GC_BGD
    seeds[:, :BORDER_STRIP] = seeds[:, -BORDER_STRIP:] = cv2.GC_BGD
    if not (seeds == cv2.GC_PR_FGD).any():
        return np.zeros(rgb.shape[:2], dtype=bool)
    background_model, object_model = np.zeros((1, 65)), np.zeros((1, 65))
    lab = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB).astype(np.float32)
    lab[..., 0] *= LIGHTNESS_WEIGHT
    damped = np.ascontiguousarray(lab.clip(0, 255).astype(np.uint8))
    cv2.setRNGSeed(0)  # GrabCut's k-means start draws from this thread's RNG: same image, same mask
    cv2.grabCut(damped, seeds, None, background_model, object_model, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    return (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)


def colour_separation(rgb: np.ndarray, mask: np.ndarray) -> float:
    """How distinct the mask's colours are from the rest: 1 - overlap of their colour histograms."""
    if mask.all() or not mask.any():
        return 0.0
    bins = (rgb // 32).astype(np.int64)
    codes = bins[..., 0] * 64 + bins[..., 1] * 8 + bins[..., 2]
    inside = np.bincount(codes[mask], minlength=512) / mask.sum()
    outside = np.bincount(codes[~mask], minlength=512) / (~mask).sum()
    return float(1.0 - np.minimum(inside, outside).sum())


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_MODEL_SIDE = 320


class LearnedRemover:
    """A salient-object model (rembg's u2net, isnet-general-use or BiRefNet ONNX) from a local file.

    onnxruntime is called directly with rembg's pre- and post-processing (rembg itself only
    loads files under its own home folder and imports numba-compiled matting code): the
    image resized to the model's input side, scaled by its maximum, normalised (ImageNet
    statistics; 0.5 and 1 for isnet); the first output's first channel (through a sigmoid
    for BiRefNet) min-max scaled to 0..1 and resized back.
    """

    def __init__(self, model_path: str):
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"background model file not found: {path} (background_model_path must name a local u2net, "
                "isnet-general-use or BiRefNet .onnx file; nothing is downloaded)"
            )
        import onnxruntime

        self.path = path
        providers = onnxruntime.get_available_providers()
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        name = path.name.lower()
        self.mean, self.std = ((0.5,) * 3, (1.0,) * 3) if "isnet" in name else (IMAGENET_MEAN, IMAGENET_STD)
        self.sigmoid = "birefnet" in name
        side = self.session.get_inputs()[0].shape[-1]
        self.side = side if isinstance(side, int) else DEFAULT_MODEL_SIDE

    def __call__(self, image_rgb: np.ndarray) -> MaskDecision:
        from PIL import Image

        resized = np.asarray(Image.fromarray(image_rgb).resize((self.side, self.side), Image.Resampling.LANCZOS))
        scaled = resized / max(float(resized.max()), 1e-6)
        normalised = ((scaled - self.mean) / self.std).transpose(2, 0, 1)[None].astype(np.float32)
        output = self.session.run(None, {self.session.get_inputs()[0].name: normalised})[0][0, 0]
        if self.sigmoid:
            output = 1.0 / (1.0 + np.exp(-output))
        low, high = float(output.min()), float(output.max())
        probability = (output - low) / max(high - low, 1e-6)
        size = working_size(*image_rgb.shape[:2])
        probability_map = Image.fromarray(probability.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)
        probability = np.asarray(probability_map)
        confidence = float(np.abs(2.0 * probability - 1.0).mean())
        tried = (f"learned remover {self.path.name}",)
        return MaskDecision(mask=probability >= 0.5, tried=tried, confidence=confidence)

"""Synthetic test images, drawn with PIL, and the bundled samples made from them.

Every shape takes its size, position and colours as arguments so tests can draw held-out
variants that the generator was never tuned on. Shapes are drawn at 4x and downsampled,
so edges are antialiased like real images. `python -m orfeas_pipelines_tests.shapes`
rewrites the PNGs in orfeas_pipelines/samples/.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 4
Colour = tuple[int, int, int]


def _canvas(width: int, height: int, background: Colour | None) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    size = (width * SUPERSAMPLE, height * SUPERSAMPLE)
    fill = (0, 0, 0, 0) if background is None else (*background, 255)
    image = Image.new("RGBA", size, fill)
    return image, ImageDraw.Draw(image)


def _finish(image: Image.Image) -> np.ndarray:
    width, height = image.size
    small = image.resize((width // SUPERSAMPLE, height // SUPERSAMPLE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8).copy()


def _scaled(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in points]


def _box(cx: float, cy: float, rx: float, ry: float) -> list[float]:
    s = SUPERSAMPLE
    return [(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s]


def star(
    size: tuple[int, int] = (256, 256),
    centre: tuple[float, float] | None = None,
    radius: float = 110,
    points: int = 5,
    inner_ratio: float = 0.45,
    colours: tuple[Colour, Colour] = ((245, 190, 40), (220, 90, 30)),
    background: Colour | None = None,
) -> np.ndarray:
    """A star with a second-colour core; transparent background unless one is given."""
    width, height = size
    cx, cy = centre or (width / 2, height / 2)
    image, draw = _canvas(width, height, background)
    outline = []
    for index in range(points * 2):
        angle = math.pi * index / points - math.pi / 2
        r = radius if index % 2 == 0 else radius * inner_ratio
        outline.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    draw.polygon(_scaled(outline), fill=(*colours[0], 255))
    draw.ellipse(_box(cx, cy, radius * 0.3, radius * 0.3), fill=(*colours[1], 255))
    return _finish(image)


def ring(
    size: tuple[int, int] = (256, 256),
    centre: tuple[float, float] | None = None,
    outer: float = 110,
    inner: float = 55,
    colours: tuple[Colour, Colour] = ((60, 120, 220), (40, 200, 180)),
    background: Colour | None = None,
) -> np.ndarray:
    """A ring (one hole): left half one colour, right half another."""
    width, height = size
    cx, cy = centre or (width / 2, height / 2)
    image, draw = _canvas(width, height, background)
    box = _box(cx, cy, outer, outer)
    draw.pieslice(box, 90, 270, fill=(*colours[0], 255))
    draw.pieslice(box, -90, 90, fill=(*colours[1], 255))
    hole = (0, 0, 0, 0) if background is None else (*background, 255)
    draw.ellipse(_box(cx, cy, inner, inner), fill=hole)
    return _finish(image)


def vase(
    size: tuple[int, int] = (256, 256),
    centre: tuple[float, float] | None = None,
    height: float = 220,
    colours: tuple[Colour, Colour] = ((170, 60, 50), (235, 200, 120)),
    background: Colour | None = (70, 110, 90),
) -> np.ndarray:
    """A vase with a stripe, on a plain opaque background (no alpha) by default."""
    width, image_height = size
    cx, cy = centre or (width / 2, image_height / 2)
    image, draw = _canvas(width, image_height, background)
    top, h = cy - height / 2, height
    profile = [0.22, 0.2, 0.26, 0.36, 0.42, 0.4, 0.32, 0.24]
    rows = np.linspace(top, top + h, len(profile))
    right = [(cx + w * h, y) for w, y in zip(profile, rows)]
    left = [(cx - w * h, y) for w, y in zip(reversed(profile), reversed(rows))]
    draw.polygon(_scaled(right + left), fill=(*colours[0], 255))
    draw.rectangle(_box(cx, top + h * 0.5, h * 0.42, h * 0.05), fill=(*colours[1], 255))
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).polygon(_scaled(right + left), fill=255)
    body = Image.new("RGBA", image.size, (*(background or (0, 0, 0)), 0 if background is None else 255))
    return _finish(Image.composite(image, body, mask))


def figure(
    size: tuple[int, int] = (256, 256),
    centre: tuple[float, float] | None = None,
    scale: float = 1.0,
    limb_width: float = 4,
    colours: tuple[Colour, Colour] = ((230, 80, 120), (90, 60, 160)),
    background: Colour | None = None,
) -> np.ndarray:
    """A stick figure: a round head and body with thin arms and legs `limb_width` px wide."""
    width, height = size
    cx, cy = centre or (width / 2, height / 2)
    s = scale
    image, draw = _canvas(width, height, background)
    limb = max(1, round(limb_width * SUPERSAMPLE))
    for start, end in [((-20, -20), (-80, -55)), ((20, -20), (80, -55)), ((-12, 40), (-45, 110)), ((12, 40), (45, 110))]:
        line = _scaled([(cx + start[0] * s, cy + start[1] * s), (cx + end[0] * s, cy + end[1] * s)])
        draw.line(line, fill=(*colours[1], 255), width=limb)
    draw.ellipse(_box(cx, cy + 5 * s, 28 * s, 45 * s), fill=(*colours[0], 255))
    draw.ellipse(_box(cx, cy - 62 * s, 26 * s, 26 * s), fill=(*colours[1], 255))
    return _finish(image)


def mushroom(
    size: tuple[int, int] = (256, 256),
    centre: tuple[float, float] | None = None,
    scale: float = 1.0,
    colours: tuple[Colour, Colour, Colour] = ((200, 40, 40), (250, 245, 230), (235, 225, 200)),
    background: Colour | None = (120, 150, 200),
) -> np.ndarray:
    """A spotted mushroom on a plain opaque background."""
    width, height = size
    cx, cy = centre or (width / 2, height / 2)
    s = scale
    image, draw = _canvas(width, height, background)
    draw.rectangle(_box(cx, cy + 40 * s, 26 * s, 60 * s), fill=(*colours[2], 255))
    draw.pieslice(_box(cx, cy, 110 * s, 95 * s), 180, 360, fill=(*colours[0], 255))
    for dx, dy, r in [(-50, -35, 14), (10, -65, 12), (55, -30, 16), (-10, -25, 9)]:
        draw.ellipse(_box(cx + dx * s, cy + dy * s, r * s, r * s), fill=(*colours[1], 255))
    return _finish(image)


def rectangle(
    size: tuple[int, int],
    box: tuple[float, float, float, float],
    colour: Colour = (200, 200, 200),
    background: Colour | None = None,
) -> np.ndarray:
    """A filled axis-aligned rectangle given as (left, top, right, bottom) in pixels."""
    width, height = size
    image, draw = _canvas(width, height, background)
    left, top, right, bottom = box
    s = SUPERSAMPLE
    draw.rectangle([left * s, top * s, right * s - 1, bottom * s - 1], fill=(*colour, 255))
    return _finish(image)


def disk(
    size: tuple[int, int] = (128, 128),
    centre: tuple[float, float] | None = None,
    radius: float = 40,
    colour: Colour = (200, 200, 200),
    background: Colour | None = None,
) -> np.ndarray:
    width, height = size
    cx, cy = centre or (width / 2, height / 2)
    image, draw = _canvas(width, height, background)
    draw.ellipse(_box(cx, cy, radius, radius), fill=(*colour, 255))
    return _finish(image)


def random_shape(
    seed: int,
    size: tuple[int, int] = (240, 240),
    min_width: float = 16.0,
    background: Colour | None = None,
) -> np.ndarray:
    """A seeded union of 2-4 random ellipses, polygons and thick strokes in one colour,
    often in several separate parts: held-out shapes nobody tuned the generator on.

    Every part is at least `min_width` pixels across (narrower ones are a resolution limit,
    not a shape), polygons are star-convex around their centre so they have no slivers.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    image, draw = _canvas(width, height, background)
    fill = (*(int(value) for value in rng.integers(30, 230, 3)), 255)
    for _part in range(int(rng.integers(2, 5))):
        cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
        kind = rng.integers(0, 3)
        if kind == 0:
            rx, ry = rng.uniform(min_width / 2, 0.3 * width, size=2)
            draw.ellipse(_box(cx, cy, rx, ry), fill=fill)
        elif kind == 1:
            radius = rng.uniform(max(min_width, 0.1 * width), 0.3 * width)
            angles = np.sort(rng.uniform(0, 2 * math.pi, int(rng.integers(5, 9))))
            radii = radius * rng.uniform(0.75, 1.0, len(angles))
            draw.polygon(_scaled([(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii)]), fill=fill)
        else:
            angle, length = rng.uniform(0, math.pi), rng.uniform(0.15, 0.4) * width
            dx, dy = length * math.cos(angle), length * math.sin(angle)
            stroke = rng.uniform(min_width, 2 * min_width)
            draw.line(_scaled([(cx - dx, cy - dy), (cx + dx, cy + dy)]), fill=fill, width=int(stroke * SUPERSAMPLE))
    return _finish(image)


def mask_of(image: np.ndarray) -> np.ndarray:
    """The ground-truth mask of an image drawn on a transparent background."""
    return image[..., 3] >= 128


SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    "star": star,
    "ring": ring,
    "vase": vase,
    "figure": figure,
    "mushroom": mushroom,
}


def write_samples(folder: Path) -> list[Path]:
    """Render the bundled sample images into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw_sample in SAMPLES.items():
        path = folder / f"{name}.png"
        pixels = draw_sample()
        image = Image.fromarray(pixels, "RGBA")
        if (pixels[..., 3] == 255).all():
            image = image.convert("RGB")
        image.save(path, optimize=True)
        paths.append(path)
    return paths


if __name__ == "__main__":
    import orfeas_pipelines

    for written in write_samples(Path(orfeas_pipelines.__file__).parent / "samples"):
        print(written, written.stat().st_size)

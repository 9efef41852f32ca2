"""Rebuilds this folder from the images that packages ship (see README.md).

Needs Debian's `opencv-doc` (`apt-get install opencv-doc`) and scikit-image. Photos are
stored with their longest side 256; labels are 1-bit PNGs of the same size, each drawn as
a polygon by hand on a gridded enlargement, or, for objects on a plain white or black
ground, thresholded against that ground (holes filled, specks dropped) and checked by eye.
Run: python orfeas_pipelines_tests/data/photos/build.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.morphology import convex_hull_image

import skimage.data

HERE = Path(__file__).resolve().parent
OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")
SKIMAGE = Path(skimage.data.__file__).parent
SIDE = 256

POLYGONS = {
    "apple": [(100, 4), (106, 3), (112, 28), (128, 27), (150, 29), (172, 33), (192, 40), (208, 52), (218, 68),
              (225, 88), (229, 112), (229, 136), (226, 160), (220, 180), (212, 200), (204, 216), (196, 232),
              (184, 244), (168, 250), (152, 246), (140, 240), (128, 240), (112, 244), (96, 246), (80, 244),
              (64, 240), (54, 228), (44, 210), (36, 190), (28, 170), (23, 148), (21, 124), (22, 100), (26, 80),
              (34, 62), (44, 48), (60, 38), (80, 32), (98, 28), (104, 28), (100, 12)],
    "windows_logo": [(64, 35), (196, 34), (202, 40), (205, 60), (206, 96), (204, 130), (198, 148), (190, 150),
                     (66, 150), (58, 140), (53, 110), (52, 90), (54, 60), (58, 42)],
}
ELLIPSES = {"orange": ((124, 136), (106, 110), 246)}
"""name: (centre, radii, lowest row): the orange sits on a table that cuts its bottom off."""

PRODUCTS = {
    "apple": OPENCV / "apple.jpg",
    "orange": OPENCV / "orange.jpg",
    "windows_logo": OPENCV / "WindowsLogo.jpg",
    "smarties": OPENCV / "smarties.png",
    "happy_fish": OPENCV / "HappyFish.jpg",
    "opencv_logo": OPENCV / "opencv-logo.png",
    "horse": SKIMAGE / "horse.png",
    "retina": SKIMAGE / "retina.jpg",
    "skimage_logo": SKIMAGE / "logo.png",
}
CONVEX = {"skimage_logo"}
"""The scikit-image logo is a disc crossed by a white band that reaches its rim."""
GROUNDS = {"smarties": "white", "happy_fish": "white", "horse": "white", "retina": "black", "skimage_logo": "white"}
BUSY = {
    "astronaut": SKIMAGE / "astronaut.png",
    "coffee": SKIMAGE / "coffee.png",
    "chelsea": SKIMAGE / "chelsea.png",
    "rocket": SKIMAGE / "rocket.jpg",
    "pca_test1": OPENCV / "pca_test1.jpg",
    "box": OPENCV / "box.png",
}
BACKGROUNDS = {
    "brick": SKIMAGE / "brick.png",
    "grass": SKIMAGE / "grass.png",
    "gravel": SKIMAGE / "gravel.png",
    "fruits": OPENCV / "fruits.jpg",
    "home": OPENCV / "home.jpg",
    "starry_night": OPENCV / "starry_night.jpg",
}


def small(path: Path) -> Image.Image:
    image = Image.open(path)
    image.thumbnail((SIDE, SIDE), Image.Resampling.LANCZOS)
    return image


def label(name: str, image: Image.Image) -> np.ndarray:
    canvas = Image.new("1", image.size, 0)
    draw = ImageDraw.Draw(canvas)
    if name in POLYGONS:
        draw.polygon(POLYGONS[name], fill=1)
        return np.asarray(canvas)
    if name in ELLIPSES:
        (cx, cy), (rx, ry), lowest = ELLIPSES[name]
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
        return np.asarray(canvas) & (np.arange(image.height) <= lowest)[:, None]
    if name == "opencv_logo":
        return np.asarray(image)[..., 3] >= 128
    rgb = np.asarray(image.convert("RGB"), dtype=float)
    ground = 255.0 if GROUNDS[name] == "white" else 0.0
    mask = ndimage.binary_fill_holes(np.abs(rgb - ground).max(axis=2) > 60)
    if name in CONVEX:
        return convex_hull_image(mask)
    parts, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, parts, range(1, count + 1))
    return np.isin(parts, 1 + np.flatnonzero(sizes >= 0.05 * sizes.max()))


def save_photo(image: Image.Image, path: Path) -> None:
    """As an opaque JPEG: a cut-out (the OpenCV logo) is laid on a light grey card first."""
    if image.mode == "RGBA":
        card = Image.new("RGBA", image.size, (232, 230, 226, 255))
        image = Image.alpha_composite(card, image)
    image.convert("RGB").save(path.with_suffix(".jpg"), quality=90)


def main() -> None:
    for folder in ("product", "busy", "backgrounds"):
        (HERE / folder).mkdir(exist_ok=True)
    for name, source in PRODUCTS.items():
        image = small(source)
        save_photo(image, HERE / "product" / name)
        Image.fromarray(label(name, image)).save(HERE / "product" / f"{name}.mask.png", optimize=True)
    for name, source in BUSY.items():
        save_photo(small(source), HERE / "busy" / name)
    for name, source in BACKGROUNDS.items():
        save_photo(small(source).convert("RGB"), HERE / "backgrounds" / name)


if __name__ == "__main__":
    main()

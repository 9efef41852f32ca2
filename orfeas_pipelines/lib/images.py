"""Decoding images into RGBA arrays with limits, and one-line errors that name the file.

Decode work is bounded before any pixel is decoded: the header's canvas against a pixel
limit; for PNG the number of chunks (Pillow walks them in Python: a million empty chunks in
12 MB took 9 s); for JPEG the number of markers (Pillow parses the header segments in
Python) and the scans times the pixels (a progressive JPEG is decoded once per scan, so
100,000 tiny scans in a 1.7 MB file took 38 s). The JPEG counts are upper bounds taken from
the raw bytes (entropy-coded data cannot hold a marker), so a crafted file can only make
itself refused.
"""

from __future__ import annotations

import io
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_PNG_CHUNKS = 10_000
"""Encoders split image data into 8-64 KB chunks: a 16 MB PNG has at most a few thousand."""
MAX_JPEG_MARKERS = 4096
MAX_JPEG_SCAN_PIXELS = 2**28
"""Scans x pixels of one JPEG: a 4096x4096 progressive JPEG may have 16 scans (encoders write
about 10), a 1024x1024 one 256; about a second of decoding at most."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_MARKER = re.compile(rb"\xff[\xc0-\xcf\xda-\xfe]")


class ImageError(ValueError):
    """An image that cannot be used; the message is one line naming the file and the reason."""

    def __init__(self, name: str, reason: str, code: str = "not_an_image"):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason
        self.code = code


def verify_image(
    data: bytes,
    name: str,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_bytes: int = MAX_IMAGE_BYTES,
    formats: tuple[str, ...] | None = None,
) -> tuple[int, int]:
    """Fully decode `data` without converting it; returns (width, height).

    The header is checked against `max_pixels` before any pixel is decoded, so a small file
    that claims a huge canvas (a decompression bomb) is refused cheaply. `formats` limits
    which Pillow decoders may look at the bytes.
    """
    with _decoded(data, name, max_pixels, max_bytes, formats) as image:
        return image.size


def decode_image(
    data: bytes,
    name: str,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_bytes: int = MAX_IMAGE_BYTES,
    formats: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Fully decode `data` to RGBA uint8 (H, W, 4) as the picture is meant to be seen, with
    the checks of `verify_image`: the EXIF orientation of a phone photo is applied, and
    16-bit greyscale is scaled to 8 bits (Pillow's own conversion clips it to white)."""
    from PIL import Image, ImageOps

    with _decoded(data, name, max_pixels, max_bytes, formats) as image:
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001 - a corrupt EXIF block: the pixels are fine as stored
            upright = image
        if upright.mode.startswith("I"):
            grey = np.asarray(upright, dtype=np.int64) >> 8
            upright = Image.fromarray(grey.clip(0, 255).astype(np.uint8), "L")
        return np.asarray(upright.convert("RGBA"), dtype=np.uint8)


@contextmanager
def _decoded(data: bytes, name: str, max_pixels: int, max_bytes: int, formats: tuple[str, ...] | None):
    from PIL import Image

    if len(data) == 0:
        raise ImageError(name, "file is empty")
    if len(data) > max_bytes:
        raise ImageError(name, f"file is {len(data)} bytes, over the limit of {max_bytes}", "too_large")
    if data.startswith(b"\xff\xd8"):
        _check_jpeg_markers(data, name)
    elif data.startswith(_PNG_SIGNATURE):
        _check_png_chunks(data, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")  # corrupt EXIF and such
            with Image.open(io.BytesIO(data), formats=formats) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(
                        name, f"image is {width}x{height} pixels, over the limit of {max_pixels}", "too_large"
                    )
                if width == 0 or height == 0:
                    raise ImageError(name, "image has no pixels")
                if image.format == "JPEG":
                    _check_jpeg_scans(data, name, width * height)
                image.load()
                yield image
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(name, f"image is too large to decode safely ({error})", "too_large") from None
    except Exception as error:  # noqa: BLE001 - malformed files raise many kinds (struct.error, TypeError...)
        raise ImageError(name, f"not a decodable image ({_first_line(error)})") from None


def _check_png_chunks(data: bytes, name: str) -> None:
    """Refuse a PNG with so many chunks that walking them would take long (stops counting at the limit)."""
    position, chunks = len(_PNG_SIGNATURE), 0
    while position + 8 <= len(data) and data[position + 4 : position + 8] != b"IEND":
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageError(name, f"PNG has more than {MAX_PNG_CHUNKS} chunks", "too_large")
        position += 12 + int.from_bytes(data[position : position + 4], "big")


def _check_jpeg_markers(data: bytes, name: str) -> None:
    """Refuse a JPEG with so many segments that parsing its header would take long."""
    markers = len(_JPEG_MARKER.findall(data))
    if markers > MAX_JPEG_MARKERS:
        raise ImageError(name, f"JPEG has {markers} markers, over the limit of {MAX_JPEG_MARKERS}", "too_large")


def _check_jpeg_scans(data: bytes, name: str, pixels: int) -> None:
    """Refuse a JPEG whose scans would make decoding take more than about a second."""
    scans = data.count(b"\xff\xda")
    if scans * pixels > MAX_JPEG_SCAN_PIXELS:
        raise ImageError(
            name,
            f"JPEG has {scans} scans of {pixels} pixels, over the decode budget of {MAX_JPEG_SCAN_PIXELS} scan-pixels",
            "too_large",
        )


def load_image(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES) -> np.ndarray:
    """Read and decode an image file; a missing or unreadable file is an ImageError too."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(path.name, f"cannot be read ({error.strerror or error})", "image_missing") from None
    return decode_image(data, path.name, max_pixels, max_bytes)


def has_meaningful_alpha(image: np.ndarray) -> bool:
    """An alpha channel means something when it marks some pixels transparent, not all."""
    alpha = image[..., 3]
    transparent = int((alpha < 128).sum())
    return 0 < transparent < alpha.size


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]

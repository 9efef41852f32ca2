"""Decoding images into RGBA arrays with limits, and one-line errors that name the file.

Decode work is bounded before any pixel is decoded: the header's canvas against a pixel
limit; for PNG the number of chunks (Pillow walks them in Python: a million empty chunks in
12 MB took 9 s); for JPEG the number of segments (Pillow parses the header segments in
Python) and of scans, alone and times the pixels (a progressive JPEG is decoded once per
scan, so 100,000 tiny scans in a 1.7 MB file took 38 s). The JPEG is walked segment by
segment as a decoder does (lengths skip payloads, entropy-coded data ends at the next real
marker, stray bytes are skipped to the next marker), so the counts are exact. What no check
foresees is bounded by `verify_image`'s `offload`: lib/intake decodes costly images in a
worker process under a CPU and wall-clock budget.
"""

from __future__ import annotations

import io
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_PNG_CHUNKS = 10_000
"""Encoders split image data into 8-64 KB chunks: a 16 MB PNG has at most a few thousand."""
MAX_JPEG_MARKERS = 4096
MAX_JPEG_SCANS = 256
"""Encoders write about 10 scans (libjpeg) to a few tens (mozjpeg's optimised scans)."""
MAX_JPEG_SCAN_PIXELS = 2**28
"""Scans x pixels of one JPEG: a 4096x4096 progressive JPEG may have 16 scans, a 1024x1024
one 256; about a second of decoding at most."""
IN_PROCESS_DECODE_COST = 2**22
"""Pixels x passes (JPEG scans, else 1) up to which `verify_image` decodes in-process even
when given an `offload`: a 2048x2048 baseline image or a 16x16 one with 256 scans, tens of
milliseconds at most; starting a worker would cost more than such a decode."""
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")
"""Where entropy-coded data (or stray bytes) end: 0xFF00 is a stuffed byte, 0xFFD0-D7 restarts."""
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD9)])
"""Markers without a length: TEM, RST0-7, SOI."""


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
    offload: Callable[[], tuple[int, int]] | None = None,
) -> tuple[int, int]:
    """Fully decode `data` without converting it; returns (width, height).

    The header is checked against `max_pixels` before any pixel is decoded, so a small file
    that claims a huge canvas (a decompression bomb) is refused cheaply. `formats` limits
    which Pillow decoders may look at the bytes. With `offload`, an image that passed the
    header checks and costs more than IN_PROCESS_DECODE_COST is decoded by `offload()`
    instead (a worker that can be abandoned), whose result or error is returned as is.
    """
    with _opened(data, name, max_pixels, max_bytes, formats) as (image, passes):
        if offload is None or image.width * image.height * passes <= IN_PROCESS_DECODE_COST:
            image.load()
            return image.size
    return offload()


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

    with _opened(data, name, max_pixels, max_bytes, formats) as (image, _):
        image.load()
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception:  # noqa: BLE001 - a corrupt EXIF block: the pixels are fine as stored
            upright = image
        if upright.mode.startswith("I"):
            grey = np.asarray(upright, dtype=np.int64) >> 8
            upright = Image.fromarray(grey.clip(0, 255).astype(np.uint8), "L")
        return np.asarray(upright.convert("RGBA"), dtype=np.uint8)


@contextmanager
def _opened(data: bytes, name: str, max_pixels: int, max_bytes: int, formats: tuple[str, ...] | None):
    """The image with its header checked, not decoded yet, and its passes (JPEG scans, else 1;
    the larger of the exact count and the number of 0xFFDA pairs in the bytes).

    Decoding errors in the body (`image.load()`) become one-line ImageErrors too.
    """
    from PIL import Image

    if len(data) == 0:
        raise ImageError(name, "file is empty")
    if len(data) > max_bytes:
        raise ImageError(name, f"file is {len(data)} bytes, over the limit of {max_bytes}", "too_large")
    scans = 0
    if data.startswith(b"\xff\xd8"):
        scans = _check_jpeg_segments(data, name)
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
                    _check_jpeg_scan_pixels(scans, name, width * height)
                # passes for the cost estimate: an upper bound, so no crafted file can look cheaper than it is
                yield image, max(scans, data.count(b"\xff\xda"), 1) if image.format == "JPEG" else 1
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


def _check_jpeg_segments(data: bytes, name: str) -> int:
    """Walk the JPEG's segments as a decoder does; refuse too many markers or scans; returns the scans.

    Stops counting at a limit, so the walk itself stays short.
    """
    position, markers, scans = 2, 0, 0
    while position + 1 < len(data):
        if data[position] != 0xFF:  # stray bytes: decoders skip them to the next marker
            found = _JPEG_NEXT_MARKER.search(data, position)
            if found is None:
                break
            position = found.start()
        marker = data[position + 1]
        position += 1 if marker == 0xFF else 2  # 0xFFFF: a fill byte before the marker
        if marker == 0xFF or marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9:  # EOI
            break
        markers += 1
        if markers > MAX_JPEG_MARKERS:
            raise ImageError(name, f"JPEG has more than {MAX_JPEG_MARKERS} markers", "too_large")
        position += max(2, int.from_bytes(data[position : position + 2], "big"))
        if marker == 0xDA:  # SOS: its entropy-coded data runs to the next real marker
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise ImageError(name, f"JPEG has more than {MAX_JPEG_SCANS} scans", "too_many_scans")
            found = _JPEG_NEXT_MARKER.search(data, position)
            position = found.start() if found else len(data)
    return scans


def _check_jpeg_scan_pixels(scans: int, name: str, pixels: int) -> None:
    """Refuse a JPEG whose scans would make decoding take more than about a second."""
    if scans * pixels > MAX_JPEG_SCAN_PIXELS:
        raise ImageError(
            name,
            f"JPEG has {scans} scans of {pixels} pixels, over the decode budget of {MAX_JPEG_SCAN_PIXELS} scan-pixels",
            "too_many_scans",
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

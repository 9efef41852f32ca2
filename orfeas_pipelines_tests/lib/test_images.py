"""Decoding images: as the picture is meant to be seen, with limits and one-line errors."""

import io
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from orfeas_pipelines.lib.images import ImageError, decode_image, has_meaningful_alpha, load_image, verify_image
from orfeas_pipelines_tests.lib.intake.drops import jpeg_with_scans, png_bytes, png_claiming_size, png_with_chunks


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_a_phone_photo_is_turned_upright_by_its_exif_orientation():
    picture = Image.new("RGB", (80, 40), (230, 20, 20))
    picture.paste((20, 20, 230), (0, 0, 20, 40))
    exif = picture.getexif()
    exif[0x0112] = 6
    pixels = decode_image(encoded(picture, "JPEG", exif=exif, quality=95), "photo.jpg")
    assert pixels.shape == (80, 40, 4), "orientation 6: rotated 90 degrees clockwise to stand upright"
    assert pixels[5, 20, 2] > 180 and pixels[75, 20, 0] > 180, "the blue left edge is now at the top"


def test_sixteen_bit_greyscale_keeps_its_tones():
    ramp = np.tile(np.linspace(0, 65535, 256), (16, 1)).astype(np.uint16)
    pixels = decode_image(encoded(Image.fromarray(ramp), "PNG"), "depth.png")
    assert pixels.dtype == np.uint8 and pixels.shape == (16, 256, 4)
    assert pixels[0, 0, 0] == 0 and pixels[0, -1, 0] == 255
    assert len(np.unique(pixels[..., 0])) > 200, "a ramp, not clipped to white"
    assert (pixels[..., 3] == 255).all()


def test_palette_and_grey_alpha_images_become_rgba():
    palette = Image.new("P", (8, 8))
    palette.putpalette([10, 200, 30] * 256)
    assert decode_image(encoded(palette, "PNG"), "p.png")[0, 0].tolist() == [10, 200, 30, 255]
    grey_alpha = Image.new("LA", (8, 8), (120, 0))
    assert decode_image(encoded(grey_alpha, "PNG"), "la.png")[0, 0].tolist() == [120, 120, 120, 0]


@pytest.mark.parametrize(
    "data, code, reason",
    [
        (b"", "not_an_image", "file is empty"),
        (b"\x89PNG\r\n\x1a\n truncated", "not_an_image", "not a decodable image"),
        (png_claiming_size(40000, 40000), "too_large", "too large to decode safely"),
    ],
)
def test_bad_bytes_are_one_line_errors_naming_the_file(data, code, reason):
    with pytest.raises(ImageError) as error:
        decode_image(data, "bad.png")
    assert error.value.code == code
    message = str(error.value)
    assert message.startswith("bad.png: ") and reason in message and "\n" not in message


@pytest.mark.parametrize(
    "data, code, reason",
    [
        (jpeg_with_scans(16, 300), "too_many_scans", "JPEG has more than 256 scans"),
        (jpeg_with_scans(4096, 10), "too_many_scans", "20 scans of 16777216 pixels, over the decode budget"),
        (
            jpeg_with_scans(64, 5000).replace(b"\xff\xda", b"\xff\xfe", 4500),
            "too_large",
            "JPEG has more than 4096 markers",
        ),
        (png_with_chunks(png_bytes(), 1_000_000), "too_large", "PNG has more than 10000 chunks"),
    ],
    ids=["jpeg-scans", "jpeg-scans-times-pixels", "jpeg-markers", "png-chunks"],
)
def test_files_that_would_take_long_to_decode_are_refused_before_decoding(data, code, reason):
    """Within every byte and pixel limit, yet seconds to minutes of decoding: refused in milliseconds."""
    started = time.monotonic()
    with pytest.raises(ImageError, match=reason) as error:
        decode_image(data, "slow", max_bytes=len(data))
    assert error.value.code == code and time.monotonic() - started < 0.5


def with_comment(jpeg: bytes, comment: bytes) -> bytes:
    """The JPEG with a comment segment (COM) holding `comment` right after its start marker."""
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def test_jpeg_scans_are_counted_exactly_not_guessed_from_bytes():
    """A marker-like pair inside a segment's payload (an EXIF blob, a comment) is no scan."""
    photo = encoded(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG", progressive=True)
    assert decode_image(with_comment(photo, b"\xff\xda" * 300), "c.jpg").shape == (64, 64, 4)
    with pytest.raises(ImageError, match="more than 256 scans"):
        decode_image(jpeg_with_scans(64, 300), "s.jpg")


def test_an_offload_decodes_only_images_over_the_in_process_cost():
    calls = []

    def offload():
        calls.append(1)
        return (-1, -1)

    small = encoded(Image.new("RGB", (64, 64)), "PNG")
    assert verify_image(small, "small.png", offload=offload) == (64, 64) and not calls
    large = encoded(Image.new("RGB", (2048, 2048)), "JPEG", progressive=True)
    assert verify_image(large, "large.jpg", offload=offload) == (-1, -1) and calls == [1]
    with pytest.raises(ImageError, match="too large to decode safely"):
        verify_image(png_claiming_size(40000, 40000), "bomb.png", offload=offload)
    assert calls == [1]
    photo = encoded(Image.new("RGB", (512, 512)), "JPEG")
    looks_costly = with_comment(photo, b"\xff\xda" * 100)
    assert verify_image(looks_costly, "c.jpg", offload=offload) == (-1, -1), "what looks like scans counts as cost"


def test_ordinary_progressive_jpegs_and_chunked_pngs_still_decode():
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8))
    assert decode_image(encoded(photo, "JPEG", progressive=True), "p.jpg").shape == (512, 512, 4)
    assert decode_image(png_with_chunks(png_bytes(), 5000), "c.png").shape == (16, 16, 4)


def test_verify_limits_the_decoders_that_see_the_bytes():
    gif = encoded(Image.new("RGB", (4, 4)), "GIF")
    assert verify_image(gif, "a.gif") == (4, 4)
    with pytest.raises(ImageError, match="not a decodable image"):
        verify_image(gif, "a.gif", formats=("PNG", "JPEG", "WEBP"))


def test_a_missing_file_names_itself(tmp_path):
    with pytest.raises(ImageError, match="^gone.png: cannot be read") as error:
        load_image(tmp_path / "gone.png")
    assert error.value.code == "image_missing"


def test_alpha_means_something_only_when_it_hides_some_pixels_but_not_all():
    image = np.full((4, 4, 4), 255, np.uint8)
    assert not has_meaningful_alpha(image)
    image[0, 0, 3] = 0
    assert has_meaningful_alpha(image)
    image[..., 3] = 0
    assert not has_meaningful_alpha(image)


def test_a_corrupt_exif_block_leaves_the_photo_as_stored():
    data = bytearray(_photo_with_exif())
    data[41], data[66] = 32, 49
    pixels = decode_image(bytes(data), "photo.jpg")
    assert pixels.shape == (16, 24, 4)


def _photo_with_exif() -> bytes:
    picture = Image.new("RGB", (24, 16), (200, 120, 40))
    exif = picture.getexif()
    exif[0x0112] = 6
    exif[0x010F] = "camera"
    return encoded(picture, "JPEG", exif=exif)


SEEDS = {"jpeg": _photo_with_exif(), "png": encoded(Image.new("RGBA", (24, 16), (9, 90, 200, 128)), "PNG")}


@settings(max_examples=400, deadline=None)
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    flips=st.lists(st.tuples(st.integers(0, 95), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_corrupted_files_only_ever_raise_image_error(seed, flips):
    """A poison file must be one image's error, never an exception that stops a tick or a run.
    The first 96 bytes hold the headers and the EXIF block, where the parsers trip."""
    data = bytearray(SEEDS[seed])
    for position, mask in flips:
        data[position % len(data)] ^= mask
    for decode in (decode_image, verify_image):
        try:
            decode(bytes(data), "fuzz.jpg")
        except ImageError:
            pass

"""Pictures of a job for people: a shaded three-quarter view of the mesh, and small inline
images (Markdown data URIs) for the Dagster UI.

The renderer is an orthographic z-buffer written with whole-array numpy operations, no loop
over triangles: every front-facing triangle is rasterised into the pixel centres it covers
(vectorised scanline spans), each with its interpolated depth, and the nearest one per pixel
wins. A closed mesh therefore has no holes whatever the size of its triangles, and a
50k-face mesh renders in well under 10 ms of CPU time at 256x256.
"""

from __future__ import annotations

import base64
import io
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import trimesh

PREVIEW_SIZE = 256
AZIMUTH_DEGREES = 35.0
"""The camera turns this far from the front (+Z) towards the right (+X) ..."""
ELEVATION_DEGREES = 25.0
"""... and looks down from this far above: the front view would only repeat the input image."""

DATA_URI_BUDGET = 24_000
"""Characters an inline image may take; Dagster's event store and UI limit metadata size."""

_LIGHT = (np.array([-0.4, 0.5, 1.0]) / np.linalg.norm([-0.4, 0.5, 1.0])).astype(np.float32)
"""Towards the light in camera coordinates (x right, y up, z at the viewer): above left."""
_AMBIENT = 0.3
_PLAIN_COLOUR = np.array([180, 180, 190], dtype=np.uint8)
_DISPLAY_GAMMA = 1 / 2.2
"""Shading scales linear light; on sRGB colours that is the factor to the power 1/2.2."""
_BACKGROUND_TINT = np.array([20.0, 30.0, 70.0])
_DIMMED = (0.35 * np.arange(256, dtype=np.float32) + 0.65 * _BACKGROUND_TINT[:, None]).astype(np.float32).astype(np.uint8)
"""(3, 256): each channel's 8-bit value dimmed towards the tint, a lookup for the mask overlay."""
_OUTLINE_COLOUR = np.array([255, 220, 0], dtype=np.uint8)


def camera_rotation(azimuth_degrees: float = AZIMUTH_DEGREES, elevation_degrees: float = ELEVATION_DEGREES) -> np.ndarray:
    """Rows are the camera's right, up and towards-the-viewer axes in mesh coordinates."""
    azimuth, elevation = math.radians(azimuth_degrees), math.radians(elevation_degrees)
    towards_viewer = np.array(
        [math.sin(azimuth) * math.cos(elevation), math.sin(elevation), math.cos(azimuth) * math.cos(elevation)]
    )
    right = np.cross([0.0, 1.0, 0.0], towards_viewer)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(towards_viewer, right), towards_viewer])


def render_preview_rgba(mesh: trimesh.Trimesh, size: int = PREVIEW_SIZE) -> np.ndarray:
    """The mesh seen from the fixed three-quarter camera: (size, size, 4) uint8, transparent
    where there is no mesh, Lambert-shaded vertex colours where there is.

    Faces turned away from the camera are skipped, as they are hidden on a closed mesh with
    outward normals (what `meshes.clean_mesh` makes).
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.faces)
    if len(faces) == 0 or len(vertices) == 0:
        raise ValueError("cannot render a preview of an empty mesh")
    if not np.isfinite(vertices).all():
        raise ValueError("cannot render a preview of a mesh with non-finite vertices")
    column, row, depth, pixels_per_unit = _to_screen(vertices, size)
    corner = np.ascontiguousarray(faces.T)
    x0, x1, x2 = column[corner[0]], column[corner[1]], column[corner[2]]
    y0, y1, y2 = row[corner[0]], row[corner[1]], row[corner[2]]
    twice_area = (x0 - x2) * (y1 - y2) - (x1 - x2) * (y0 - y2)
    # Rows grow downwards, so a triangle wound counter-clockwise towards the viewer (facing
    # it) has a negative signed area on screen; the others are hidden on a closed mesh.
    front = np.flatnonzero(twice_area < 0)
    front_corners = corner[:, front]
    triangle = _Triangles(
        x=(x0[front], x1[front], x2[front]),
        y=(y0[front], y1[front], y2[front]),
        depth=(depth[front_corners[0]], depth[front_corners[1]], depth[front_corners[2]]),
    )
    image = np.zeros(size * size, dtype="<u4")
    fragments = _fragments(triangle, size)
    if fragments is not None:
        pixel, fragment_depth, face = fragments
        nearest = np.full(size * size, -np.inf, dtype=np.float32)
        np.maximum.at(nearest, pixel, fragment_depth)
        visible = fragment_depth >= nearest[pixel]
        colours = _shaded_colours(mesh, front, front_corners, triangle, pixels_per_unit)
        image[pixel[visible]] = colours[face[visible]]
    return image.view(np.uint8).reshape(size, size, 4)


def thumbnail(rgba: np.ndarray, max_side: int = 128) -> np.ndarray:
    """The picture shrunk to at most `max_side` pixels a side (as it is when it fits): shrink
    once, then pass the thumbnail to the data URIs below, which leave it as it is."""
    return _shrunk(_checked_image(rgba), max_side)


def thumbnail_data_uri(rgba: np.ndarray, max_side: int = 128) -> str:
    """The input image, shrunk to at most `max_side` pixels a side, as an inline image."""
    return _data_uri(thumbnail(rgba, max_side))


def mask_overlay_data_uri(rgba: np.ndarray, mask: np.ndarray, max_side: int = 128) -> str:
    """The input with the background dimmed towards blue and the mask's outline in yellow,
    as an inline image. The mask may have another resolution than the image."""
    picture = thumbnail(rgba, max_side)
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"mask must be a non-empty 2-D array, got shape {mask.shape}")
    inside = _resized_mask(mask, picture.shape[:2])
    rgb = _over_grey(picture)
    overlay = np.stack([np.take(_DIMMED[channel], rgb[:, :, channel]) for channel in range(3)], axis=2)
    np.copyto(overlay, rgb, where=inside[:, :, None])
    overlay[_outline(inside)] = _OUTLINE_COLOUR
    return _data_uri(overlay)


def contact_sheet_png(images: list[bytes], columns: int = 4, cell: int = 128) -> bytes:
    """Encoded pictures (PNG, JPEG, ...) shrunk into `cell`-pixel squares on a grid."""
    from PIL import Image

    if columns < 1:
        raise ValueError(f"a contact sheet needs at least one column, got {columns}")
    if not images:
        raise ValueError("a contact sheet needs at least one picture")
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGBA", (min(columns, len(images)) * cell, rows * cell), (255, 255, 255, 255))
    for index, data in enumerate(images):
        try:
            picture = Image.open(io.BytesIO(data)).convert("RGBA")
        except Exception as error:  # noqa: BLE001 - Pillow raises many kinds for bad bytes
            raise ValueError(f"contact sheet picture {index} cannot be decoded: {error}") from None
        picture.thumbnail((cell, cell))
        row, column = divmod(index, columns)
        left = column * cell + (cell - picture.width) // 2
        top = row * cell + (cell - picture.height) // 2
        sheet.alpha_composite(picture, (left, top))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _to_screen(vertices: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Mesh coordinates to pixel column, pixel row and depth towards the viewer as seen by
    the fixed camera (each a contiguous array), the projection centred and its larger side
    filling the picture less a margin; and the pixels per mesh unit."""
    right, up, towards_viewer = camera_rotation().astype(np.float32)
    across, height = vertices @ right, vertices @ up
    margin = max(2, size // 32)
    lowest_x, highest_x = across.min(), across.max()
    lowest_y, highest_y = height.min(), height.max()
    scale = np.float32((size - 2 * margin) / (float(max(highest_x - lowest_x, highest_y - lowest_y)) or 1.0))
    column = (across - (lowest_x + highest_x) / 2) * scale + np.float32(size / 2)
    row = ((lowest_y + highest_y) / 2 - height) * scale + np.float32(size / 2)
    return column, row, vertices @ towards_viewer, float(scale)


@dataclass(frozen=True)
class _Triangles:
    """Screen-space corners as three contiguous arrays per coordinate (fast to gather)."""

    x: tuple[np.ndarray, np.ndarray, np.ndarray]
    y: tuple[np.ndarray, np.ndarray, np.ndarray]
    depth: tuple[np.ndarray, np.ndarray, np.ndarray]


def _fragments(triangle: _Triangles, size: int):
    """Every (pixel, depth, triangle) where a pixel centre lies inside a triangle, or None.

    Scanline spans, vectorised. Each triangle, its corners sorted top to bottom, splits at
    its middle corner into an upper and a lower part bounded by one edge on the left and one
    on the right. Every part is expanded into the pixel rows it crosses, every (part, row)
    into the columns between its two edges, each with one `repeat`: the work follows the
    covered pixels, so long thin triangles cost no more than small ones. An edge two
    triangles share is computed from the same endpoints in the same order, so both get the
    same x and a pixel centre on it is inside both: no cracks.
    """
    (top_x, middle_x, bottom_x), (top_y, middle_y, bottom_y) = _sorted_by_row(triangle.x, triangle.y)
    long_slope, long_start = _edge(top_x, top_y, bottom_x, bottom_y)
    upper_slope, upper_start = _edge(top_x, top_y, middle_x, middle_y)
    lower_slope, lower_start = _edge(middle_x, middle_y, bottom_x, bottom_y)
    long_on_left = long_slope * middle_y + long_start < middle_x
    middle_row = np.ceil(middle_y - 0.5)
    # Parts 0..n-1 are the triangles' upper parts, n..2n-1 their lower parts.
    part_first_row = np.concatenate([np.ceil(top_y - 0.5), middle_row])
    part_last_row = np.concatenate([middle_row - 1, np.floor(bottom_y - 0.5)])
    left_slope, right_slope = _sides(long_on_left, long_slope, upper_slope, lower_slope)
    left_start, right_start = _sides(long_on_left, long_start, upper_start, lower_start)

    first_row = np.clip(part_first_row, 0, size).astype(np.int32)
    last_row = np.clip(part_last_row, -1, size - 1).astype(np.int32)
    rows = _expand(np.maximum(last_row - first_row + 1, 0))
    if rows is None:
        return None
    part, row_offset = rows
    row = first_row[part] + row_offset
    centre_y = row.astype(np.float32) + np.float32(0.5)
    first_column = np.clip(np.ceil(left_slope[part] * centre_y + left_start[part] - 0.5), 0, size).astype(np.int32)
    last_column = np.clip(np.floor(right_slope[part] * centre_y + right_start[part] - 0.5), -1, size - 1).astype(np.int32)
    columns = _expand(np.maximum(last_column - first_column + 1, 0))
    if columns is None:
        return None
    span, column_offset = columns
    column = first_column[span] + column_offset

    depth_x, depth_y, depth_origin = _depth_plane(triangle)
    face = part % len(depth_x)
    span_depth = depth_y[face] * centre_y + depth_origin[face]
    span_face = face[span]
    depth = span_depth[span] + depth_x[span_face] * (column.astype(np.float32) + np.float32(0.5))
    # A sliver's depth plane is steep: keep its depths between its corners' own.
    nearest, farthest = _extremes(triangle.depth)
    depth = np.clip(depth, farthest[span_face], nearest[span_face])
    return row[span] * size + column, depth, span_face


def _extremes(values):
    """Element-wise (largest, smallest) of three arrays."""
    first, second, third = values
    return np.maximum(np.maximum(first, second), third), np.minimum(np.minimum(first, second), third)


def _sides(long_on_left, long_edge, upper_edge, lower_edge):
    """(left, right) values of the parts' bounding edges, upper parts first."""
    upper_left = np.where(long_on_left, long_edge, upper_edge)
    upper_right = np.where(long_on_left, upper_edge, long_edge)
    lower_left = np.where(long_on_left, long_edge, lower_edge)
    lower_right = np.where(long_on_left, lower_edge, long_edge)
    return np.concatenate([upper_left, lower_left]), np.concatenate([upper_right, lower_right])


def _sorted_by_row(xs, ys):
    """Each triangle's corners reordered top (smallest row) to bottom: a sorting network."""
    x0, x1, x2 = xs
    y0, y1, y2 = ys
    for first, second in ((0, 1), (1, 2), (0, 1)):
        pair_x, pair_y = [x0, x1, x2], [y0, y1, y2]
        swap = pair_y[first] > pair_y[second]
        low_x = np.where(swap, pair_x[second], pair_x[first])
        high_x = np.where(swap, pair_x[first], pair_x[second])
        low_y = np.where(swap, pair_y[second], pair_y[first])
        high_y = np.where(swap, pair_y[first], pair_y[second])
        pair_x[first], pair_x[second], pair_y[first], pair_y[second] = low_x, high_x, low_y, high_y
        (x0, x1, x2), (y0, y1, y2) = pair_x, pair_y
    return (x0, x1, x2), (y0, y1, y2)


def _edge(start_x, start_y, end_x, end_y):
    """The edge as x = slope * y + start from its upper to its lower corner; a horizontal edge
    is x = start_x (it bounds at most one row, where the other edge gives the far end)."""
    rise = end_y - start_y
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(rise > 0, (end_x - start_x) / rise, np.float32(0))
    return slope, start_x - slope * start_y


def _depth_plane(triangle: _Triangles):
    """Depth as a plane over the screen, depth = a * x + b * y + c, for each triangle."""
    x0, x1, x2 = triangle.x
    y0, y1, y2 = triangle.y
    depth0, depth1, depth2 = triangle.depth
    inverse = np.float32(1) / ((x0 - x2) * (y1 - y2) - (x1 - x2) * (y0 - y2))
    weight0_x, weight0_y = (y1 - y2) * inverse, (x2 - x1) * inverse
    weight1_x, weight1_y = (y2 - y0) * inverse, (x0 - x2) * inverse
    rise0, rise1 = depth0 - depth2, depth1 - depth2
    depth_x = weight0_x * rise0 + weight1_x * rise1
    depth_y = weight0_y * rise0 + weight1_y * rise1
    return depth_x, depth_y, depth2 - depth_x * x2 - depth_y * y2


def _expand(counts: np.ndarray):
    """(owner, offset) for `counts[i]` items owned by each i, or None when there are none."""
    total = int(counts.sum())
    if total == 0:
        return None
    owner = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    starts = np.cumsum(counts, dtype=np.int32) - counts
    return owner, np.arange(total, dtype=np.int32) - starts[owner]


def _shaded_colours(
    mesh: trimesh.Trimesh, shown: np.ndarray, corners: np.ndarray, triangle: _Triangles, pixels_per_unit: float
) -> np.ndarray:
    """Opaque RGBA packed little-endian into uint32, one per shown face: its colour (the mean
    of its corners' vertex colours, or its face colour) under Lambert light, flat per face."""
    x0, x1, x2 = triangle.x
    y0, y1, y2 = triangle.y
    depth0, depth1, depth2 = triangle.depth
    # Back to camera units (x right, y up) for the normal: rows grow downwards.
    ax, ay, az = (x1 - x0) / pixels_per_unit, (y0 - y1) / pixels_per_unit, depth1 - depth0
    bx, by, bz = (x2 - x0) / pixels_per_unit, (y0 - y2) / pixels_per_unit, depth2 - depth0
    normal_x, normal_y, normal_z = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
    length = np.sqrt(normal_x * normal_x + normal_y * normal_y + normal_z * normal_z)
    towards_light = normal_x * _LIGHT[0] + normal_y * _LIGHT[1] + normal_z * _LIGHT[2]
    lambert = np.clip(towards_light / np.maximum(length, np.float32(1e-30)), 0, 1)
    shade = (_AMBIENT + (1 - _AMBIENT) * lambert) ** _DISPLAY_GAMMA
    if mesh.visual.kind == "vertex":
        vertex_colours = np.asarray(mesh.visual.vertex_colors)
        # One contiguous array per channel: gathering 1-D arrays is several times faster.
        red, green, blue = (vertex_colours[:, channel].astype(np.float32) for channel in range(3))
        colours = [(values[corners[0]] + values[corners[1]] + values[corners[2]]) / 3 for values in (red, green, blue)]
    else:
        plain = np.asarray(mesh.visual.face_colors)[shown] if mesh.visual.kind == "face" else _PLAIN_COLOUR[None, :]
        colours = [plain[:, channel].astype(np.float32) for channel in range(3)]
    red, green, blue = (np.clip(values * shade, 0, 255).astype(np.uint32) for values in colours)
    return red | (green << 8) | (blue << 16) | np.uint32(255 << 24)


def _checked_image(rgba: np.ndarray) -> np.ndarray:
    image = np.asarray(rgba)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"image must be an (H, W, 3 or 4) uint8 array, got {image.dtype} {image.shape}")
    return image


def _shrunk(image: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return image
    factor = max(height, width) // max_side
    if factor * max_side == max(height, width) and height % factor == 0 and width % factor == 0:
        # Whole blocks (the 256-pixel preview halved): their average, a third of the cost of
        # the bilinear filter and what its reducing step would do for larger factors.
        return np.asarray(Image.fromarray(image).reduce(factor))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))


def _resized_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A bool mask of `shape` from a bool, 0..1 float or 0..255 integer mask of any size."""
    from PIL import Image

    values = mask.astype(np.float32)
    if mask.dtype != bool and values.max(initial=0) > 1:
        values /= 255.0
    resized = Image.fromarray(values).resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized) >= 0.5


def _outline(inside: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (the picture's edge counts as outside)."""
    padded = np.pad(inside, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~interior


def _over_grey(image: np.ndarray) -> np.ndarray:
    """RGB: an RGBA picture composited over mid grey, so transparent areas read as background."""
    if image.shape[2] == 3:
        return image
    if (image[:, :, 3] == 255).all():
        return image[:, :, :3]
    alpha = image[:, :, 3:].astype(np.float32) / 255.0
    return (image[:, :, :3] * alpha + 128.0 * (1 - alpha)).astype(np.uint8)


def png_bytes(rgba: np.ndarray) -> bytes:
    """RGBA PNG with no row filters and zlib level 1: three times faster than Pillow's
    encoder for a preview (about 1 ms), and mostly-transparent pictures still shrink 8x."""
    height, width, _ = rgba.shape
    rows = np.zeros((height, width * 4 + 1), dtype=np.uint8)  # each row starts with filter 0
    rows[:, 1:] = rgba.reshape(height, -1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    pixels = zlib.compress(rows.tobytes(), 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _palette_png(image: np.ndarray) -> bytes:
    """A small PNG: a 256-colour palette (with alpha when the picture has it). The fast octree
    without the optimising pass costs about 0.5 ms for a 128-pixel picture, a sixth of median
    cut with it, for files about 5% larger."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).quantize(256, method=Image.Quantize.FASTOCTREE).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_uri(image: np.ndarray) -> str:
    """A palette PNG as a `data:` URI within DATA_URI_BUDGET, halving the picture if needed."""
    while True:
        uri = "data:image/png;base64," + base64.b64encode(_palette_png(image)).decode("ascii")
        if len(uri) <= DATA_URI_BUDGET or max(image.shape[:2]) <= 8:
            return uri
        image = _shrunk(image, max(image.shape[:2]) // 2)

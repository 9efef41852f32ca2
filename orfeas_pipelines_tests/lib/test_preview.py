import base64
import io
import math

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull

from orfeas_pipelines.lib.preview import (
    AZIMUTH_DEGREES,
    ELEVATION_DEGREES,
    contact_sheet_png,
    mask_overlay_data_uri,
    png_bytes,
    render_preview_rgba,
    thumbnail_data_uri,
)

SIZE = 256
MARGIN = SIZE // 32


def coloured(mesh: trimesh.Trimesh, rgb) -> trimesh.Trimesh:
    mesh.visual.vertex_colors = np.tile([*rgb, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    return mesh


def towards_camera() -> np.ndarray:
    """The unit vector from the scene to the camera, from the angles alone."""
    azimuth, elevation = math.radians(AZIMUTH_DEGREES), math.radians(ELEVATION_DEGREES)
    return np.array([math.sin(azimuth) * math.cos(elevation), math.sin(elevation), math.cos(azimuth) * math.cos(elevation)])


def reference_projection(points: np.ndarray) -> np.ndarray:
    """Image (column, row) of points, derived independently of the renderer: turn the scene
    by -azimuth about +Y and then by +elevation about +X (so the camera ends up on +Z), drop
    depth, and fit the projection's bounding box into the picture less the margin."""
    turn = trimesh.transformations.rotation_matrix(math.radians(ELEVATION_DEGREES), [1, 0, 0])
    turn = turn @ trimesh.transformations.rotation_matrix(math.radians(-AZIMUTH_DEGREES), [0, 1, 0])
    seen = trimesh.transformations.transform_points(points, turn)
    assert np.allclose(trimesh.transformations.transform_points([towards_camera()], turn), [[0, 0, 1]])
    lower, upper = seen[:, :2].min(axis=0), seen[:, :2].max(axis=0)
    scale = (SIZE - 2 * MARGIN) / (upper - lower).max()
    centre = (lower + upper) / 2
    return np.stack([(seen[:, 0] - centre[0]) * scale + SIZE / 2, (centre[1] - seen[:, 1]) * scale + SIZE / 2], axis=1)


def iou(first: np.ndarray, second: np.ndarray) -> float:
    return float((first & second).sum() / (first | second).sum())


def test_a_box_has_the_silhouette_of_its_projected_corners():
    box = coloured(trimesh.creation.box(extents=[1.0, 0.6, 0.3]), [200, 200, 200])
    rendered = render_preview_rgba(box)[:, :, 3] > 0
    corners = reference_projection(box.vertices)
    outline = corners[ConvexHull(corners).vertices]
    reference = Image.new("1", (SIZE, SIZE))
    ImageDraw.Draw(reference).polygon([tuple(point) for point in outline], fill=1)
    assert iou(rendered, np.asarray(reference)) >= 0.97


def test_a_sphere_is_a_full_disc_without_holes():
    sphere = coloured(trimesh.creation.icosphere(subdivisions=6), [200, 200, 200])
    rendered = render_preview_rgba(sphere)[:, :, 3] > 0
    rows, columns = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    disc = np.hypot(columns - SIZE / 2, rows - SIZE / 2) <= (SIZE - 2 * MARGIN) / 2
    assert iou(rendered, disc) >= 0.97
    assert (ndimage.binary_fill_holes(rendered) == rendered).all()


def test_large_and_long_thin_triangles_are_filled():
    capsule = coloured(trimesh.creation.capsule(height=2.0, radius=0.3, count=[24, 24]), [200, 200, 200])
    rendered = render_preview_rgba(capsule)[:, :, 3] > 0
    assert rendered.mean() > 0.2
    assert (ndimage.binary_fill_holes(rendered) == rendered).all()


@pytest.mark.parametrize("near_first", [True, False])
def test_the_near_object_hides_the_far_one(near_first):
    near = coloured(trimesh.creation.box(extents=[0.4, 0.4, 0.4]), [230, 20, 20])
    far = coloured(trimesh.creation.box(extents=[0.4, 0.4, 0.4]), [20, 20, 230])
    far.apply_translation(-1.5 * towards_camera() + [0.25, 0, 0])
    scene = trimesh.util.concatenate([near, far] if near_first else [far, near])
    picture = render_preview_rgba(scene).astype(int)
    shown = picture[:, :, 3] > 0
    red = shown & (picture[:, :, 0] > picture[:, :, 2])
    blue = shown & (picture[:, :, 2] > picture[:, :, 0])
    near_centre = np.round(reference_projection(np.r_[near.vertices, far.vertices]).mean(axis=0)).astype(int)
    assert blue.sum() > 0.05 * shown.sum(), "the far box peeks out beside the near one"
    assert red.sum() > 2 * blue.sum(), "the near box is drawn whole"
    assert red[near_centre[1], near_centre[0]]


def test_the_camera_sees_the_front_right_and_top():
    sphere = trimesh.creation.icosphere(subdivisions=4)
    facing = (sphere.vertices @ towards_camera()) > 0.3
    # Green where a vertex faces the camera, red elsewhere: culling the wrong side shows red.
    sphere.visual.vertex_colors = np.where(facing[:, None], [[20, 200, 20, 255]], [[200, 20, 20, 255]]).astype(np.uint8)
    picture = render_preview_rgba(sphere).astype(int)
    centre = picture[SIZE // 2, SIZE // 2]
    assert centre[1] > 3 * centre[0]


def test_the_picture_is_shaded_brighter_towards_the_light():
    sphere = coloured(trimesh.creation.icosphere(subdivisions=5), [200, 200, 200])
    picture = render_preview_rgba(sphere).astype(float)
    brightness = picture[:, :, :3].mean(axis=2)[picture[:, :, 3] > 0]
    assert brightness.std() > 20
    upper_left = picture[SIZE // 3, SIZE // 3, :3].mean()
    lower_right = picture[2 * SIZE // 3, 2 * SIZE // 3, :3].mean()
    assert upper_left > lower_right + 25


def test_preview_png_is_a_256_pixel_rgba_picture():
    picture = Image.open(io.BytesIO(png_bytes(render_preview_rgba(trimesh.creation.icosphere()))))
    assert picture.format == "PNG" and picture.mode == "RGBA" and picture.size == (SIZE, SIZE)


def test_a_mesh_without_colours_is_drawn_plain_and_face_colours_are_used():
    plain = render_preview_rgba(trimesh.creation.icosphere())
    assert plain[SIZE // 2, SIZE // 2, 3] == 255 and plain[SIZE // 2, SIZE // 2, :3].min() > 60
    box = trimesh.creation.box()
    box.visual.face_colors = [0, 200, 0, 255]
    pixel = render_preview_rgba(box)[SIZE // 2, SIZE // 2]
    assert pixel[1] > 100 and pixel[0] == pixel[2] == 0


@pytest.mark.parametrize("mesh", [trimesh.Trimesh(), trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, np.nan, 0]], [[0, 1, 2]])])
def test_unrenderable_meshes_are_refused(mesh):
    with pytest.raises(ValueError, match="cannot render a preview"):
        render_preview_rgba(mesh)


def test_a_50k_face_mesh_renders_without_pinholes():
    torus = coloured(trimesh.creation.torus(1.0, 0.4, major_sections=160, minor_sections=160), [200, 120, 40])
    assert len(torus.faces) == 51_200
    shown = np.pad(render_preview_rgba(torus)[:, :, 3] > 0, 1)
    surrounded = shown[:-2, 1:-1] & shown[2:, 1:-1] & shown[1:-1, :-2] & shown[1:-1, 2:]
    assert not (surrounded & ~shown[1:-1, 1:-1]).any()


def decoded(uri: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    assert len(uri) < 30_000
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :])))


def photo_like(height: int, width: int) -> np.ndarray:
    """Noise over a gradient: the hardest kind of picture to compress."""
    generator = np.random.default_rng(0)
    gradient = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    noisy = gradient * 0.5 + generator.integers(0, 128, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(480, 640, 3), (900, 300, 4), (64, 64, 4)])
def test_thumbnails_fit_in_the_metadata_budget(shape):
    image = photo_like(*shape[:2])
    if shape[2] == 4:
        image = np.dstack([image, np.full(shape[:2], 255, np.uint8)])
    picture = decoded(thumbnail_data_uri(image))
    assert max(picture.size) == min(128, max(shape[:2]))
    assert picture.size[0] / picture.size[1] == pytest.approx(shape[1] / shape[0], rel=0.05)


def test_mask_overlay_dims_the_background_outlines_the_mask_and_accepts_another_resolution():
    image = np.full((400, 400, 3), 200, np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[25:75, 25:75] = True
    overlay = np.asarray(decoded(mask_overlay_data_uri(image, mask)).convert("RGB")).astype(int)
    assert overlay.shape == (128, 128, 3)
    inside, outside, edge = overlay[64, 64], overlay[5, 5], overlay[64, 32]
    assert abs(inside - 200).max() <= 8
    assert outside.sum() < inside.sum() / 2 and outside[2] > outside[0]
    assert edge[0] > 200 and edge[1] > 180 and edge[2] < 80


@pytest.mark.parametrize("mask", [np.zeros((10, 10, 3)), np.zeros((0, 5))])
def test_a_mask_that_is_not_a_picture_is_refused(mask):
    with pytest.raises(ValueError, match="mask must be a non-empty 2-D array"):
        mask_overlay_data_uri(np.zeros((10, 10, 3), np.uint8), mask)


@pytest.mark.parametrize("image", [np.zeros((10, 10), np.uint8), np.zeros((10, 10, 3), np.float32)])
def test_an_image_that_is_not_rgb_or_rgba_bytes_is_refused(image):
    with pytest.raises(ValueError, match=r"image must be an \(H, W, 3 or 4\) uint8 array"):
        thumbnail_data_uri(image)


def test_contact_sheet_lays_pictures_out_on_a_grid():
    pictures = []
    for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]:
        buffer = io.BytesIO()
        Image.new("RGB", (60, 30), colour).save(buffer, format="PNG")
        pictures.append(buffer.getvalue())
    sheet = Image.open(io.BytesIO(contact_sheet_png(pictures, columns=2, cell=64))).convert("RGB")
    assert sheet.size == (128, 128)
    assert sheet.getpixel((32, 32)) == (255, 0, 0)
    assert sheet.getpixel((96, 32)) == (0, 255, 0)
    assert sheet.getpixel((32, 96)) == (0, 0, 255)
    assert sheet.getpixel((96, 96)) == (255, 255, 255)


def test_a_contact_sheet_of_nothing_or_of_garbage_is_refused():
    with pytest.raises(ValueError, match="at least one picture"):
        contact_sheet_png([], columns=2)
    with pytest.raises(ValueError, match="picture 0 cannot be decoded"):
        contact_sheet_png([b"not a picture"], columns=2)

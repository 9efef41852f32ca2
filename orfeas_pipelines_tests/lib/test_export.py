import numpy as np
import pytest
import trimesh
from PIL import Image

from orfeas_pipelines.lib.export import MESH_FORMATS, export_mesh, render_preview


def two_coloured_sphere() -> trimesh.Trimesh:
    """Red on the -X half, blue on the +X half."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    colours = np.where(sphere.vertices[:, :1] < 0, [[220, 20, 20, 255]], [[20, 20, 220, 255]])
    sphere.visual.vertex_colors = colours.astype(np.uint8)
    return sphere


def test_every_format_round_trips_through_trimesh(tmp_path):
    sphere = two_coloured_sphere()
    written = export_mesh(sphere, tmp_path, "ball", MESH_FORMATS)
    assert set(written) == set(MESH_FORMATS)
    for fmt, path in written.items():
        assert path == tmp_path / f"ball.{fmt}"
        loaded = trimesh.load(path, force="mesh")
        assert len(loaded.faces) == len(sphere.faces), fmt
        assert loaded.is_watertight, fmt
        assert np.allclose(loaded.bounds, sphere.bounds, atol=1e-5), fmt


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_vertex_colours_survive_where_the_format_carries_them(tmp_path, fmt):
    path = export_mesh(two_coloured_sphere(), tmp_path, "ball", [fmt])[fmt]
    loaded = trimesh.load(path, force="mesh")
    colours = loaded.visual.vertex_colors[:, :3].astype(int)
    left = loaded.vertices[:, 0] < -0.5
    right = loaded.vertices[:, 0] > 0.5
    assert (colours[left, 0] > colours[left, 2]).all()
    assert (colours[right, 2] > colours[right, 0]).all()


def test_stl_is_binary(tmp_path):
    sphere = two_coloured_sphere()
    path = export_mesh(sphere, tmp_path, "ball", ["stl"])["stl"]
    assert path.stat().st_size == 84 + 50 * len(sphere.faces)


def test_unknown_format_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="unknown mesh format 'fbx'"):
        export_mesh(two_coloured_sphere(), tmp_path, "ball", ["stl", "fbx"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stem", ["", "../ball", "a/b", ".."])
def test_stem_must_be_a_plain_name(tmp_path, stem):
    with pytest.raises(ValueError, match="plain file name"):
        export_mesh(two_coloured_sphere(), tmp_path, stem, ["stl"])


def test_no_temporary_files_are_left_behind(tmp_path):
    export_mesh(two_coloured_sphere(), tmp_path, "ball", MESH_FORMATS)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(f"ball.{fmt}" for fmt in MESH_FORMATS)


def test_preview_shows_the_mesh_as_the_camera_sees_it(tmp_path):
    path = render_preview(two_coloured_sphere(), tmp_path / "ball.png", size=64)
    picture = np.asarray(Image.open(path))
    assert picture.shape == (64, 64, 4)
    assert picture[0, 0, 3] == 0 and picture[32, 32, 3] == 255
    left, right = picture[32, 16, :3].astype(int), picture[32, 48, :3].astype(int)
    assert left[0] > left[2] and right[2] > right[0]


def test_preview_of_an_empty_mesh_is_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        render_preview(trimesh.Trimesh(), tmp_path / "none.png")

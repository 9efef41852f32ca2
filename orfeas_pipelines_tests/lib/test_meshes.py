import numpy as np
import pytest
import trimesh

from orfeas_pipelines.lib.meshes import (
    clean_mesh,
    inspect_mesh,
    is_valid_mesh,
    mesh_problems,
    mesh_summary,
    normalise_to_frame,
)


def coloured_box(extents=(1.0, 2.0, 3.0)) -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=extents)
    box.visual.vertex_colors = np.tile([200, 30, 40, 255], (len(box.vertices), 1))
    return box


def test_floaters_are_removed_and_the_body_kept():
    body = trimesh.creation.icosphere(subdivisions=3)
    speck = trimesh.creation.box(extents=(0.05, 0.05, 0.05))
    speck.apply_translation([3, 0, 0])
    cleaned = clean_mesh(trimesh.util.concatenate([body, speck]))
    assert cleaned.body_count == 1
    assert len(cleaned.faces) == len(body.faces)
    assert is_valid_mesh(cleaned)


def test_degenerate_and_duplicate_faces_are_removed():
    box = coloured_box()
    faces = np.vstack([box.faces, box.faces[:1], [[0, 0, 1]]])
    broken = trimesh.Trimesh(box.vertices, faces, vertex_colors=box.visual.vertex_colors, process=False)
    assert mesh_problems(broken)
    cleaned = clean_mesh(broken)
    assert mesh_problems(cleaned) == []
    assert len(cleaned.faces) == 12
    assert (cleaned.visual.vertex_colors[:, :3] == [200, 30, 40]).all()


def test_inverted_winding_is_fixed():
    box = coloured_box()
    box.invert()
    assert box.volume < 0
    assert clean_mesh(box).volume == pytest.approx(6.0)


def test_input_mesh_is_left_untouched():
    box = coloured_box()
    box.invert()
    before = box.faces.copy()
    clean_mesh(box)
    assert np.array_equal(box.faces, before)


def test_face_budget_keeps_the_mesh_valid_and_coloured():
    sphere = trimesh.creation.icosphere(subdivisions=4)
    sphere.visual.vertex_colors = np.tile([10, 200, 30, 255], (len(sphere.vertices), 1))
    cleaned = clean_mesh(sphere, face_budget=1000)
    assert 100 < len(cleaned.faces) <= 1000
    assert is_valid_mesh(cleaned)
    assert cleaned.visual.kind == "vertex"
    assert (cleaned.visual.vertex_colors[:, :3] == [10, 200, 30]).all()
    assert np.allclose(cleaned.extents, sphere.extents, atol=0.2)


def test_normalise_to_frame_centres_and_scales_to_unit_largest_side():
    box = coloured_box((2.0, 4.0, 1.0))
    box.apply_translation([5, -3, 2])
    framed = normalise_to_frame(box)
    assert np.allclose(framed.bounds[0], -framed.bounds[1])
    assert framed.extents.max() == pytest.approx(1.0)
    assert np.allclose(framed.extents, [0.5, 1.0, 0.25])
    assert box.extents.max() == pytest.approx(4.0)
    assert framed.visual.kind == "vertex"


def test_normalise_to_frame_refuses_empty_meshes():
    with pytest.raises(ValueError, match="empty"):
        normalise_to_frame(trimesh.Trimesh())


def test_mesh_problems_names_each_problem():
    assert mesh_problems(None) == ["mesh is empty"]
    assert mesh_problems(trimesh.Trimesh()) == ["mesh is empty"]
    box = coloured_box()
    assert mesh_problems(box) == [] and is_valid_mesh(box)
    open_box = trimesh.Trimesh(box.vertices, box.faces[1:], process=False)
    assert mesh_problems(open_box) == ["mesh is not watertight"]
    flat = trimesh.Trimesh(box.vertices, np.vstack([box.faces, [[0, 0, 1]]]), process=False)
    assert "mesh has 1 degenerate faces" in mesh_problems(flat)
    broken = box.copy()
    broken.vertices[0] = [np.nan, 0, 0]
    assert mesh_problems(broken) == ["mesh has non-finite vertex coordinates"]
    assert not is_valid_mesh(broken)


def test_mesh_summary_reports_topology():
    torus = trimesh.creation.torus(major_radius=1.0, minor_radius=0.3)
    summary = mesh_summary(torus)
    assert summary["watertight"] and summary["genus"] == 1 and summary["euler_number"] == 0
    sphere = mesh_summary(trimesh.creation.icosphere())
    assert sphere["genus"] == 0 and sphere["components"] == 1
    assert sphere["faces"] == 1280 and sphere["vertices"] == 642
    assert sphere["extents"] == pytest.approx([2.0, 2.0, 2.0])


def test_one_pass_inspection_agrees_with_trimesh():
    two_bodies = trimesh.util.concatenate([trimesh.creation.icosphere(), trimesh.creation.torus(1.0, 0.3).apply_translation([5, 0, 0])])
    open_box = trimesh.creation.box()
    open_box.faces = open_box.faces[:-1]
    edge_to_edge = trimesh.util.concatenate([trimesh.creation.box(), trimesh.creation.box().apply_translation([1, 1, 0])])
    edge_to_edge.merge_vertices()  # one edge shared by four faces: closed but not watertight
    for mesh in (two_bodies, open_box, edge_to_edge):
        problems, facts = inspect_mesh(mesh)
        reference = trimesh.Trimesh(mesh.vertices.copy(), mesh.faces.copy(), process=False)
        assert facts["watertight"] == reference.is_watertight
        assert facts["components"] == reference.body_count and facts["euler_number"] == reference.euler_number
        assert ("mesh is not watertight" in problems) == (not reference.is_watertight)
    assert inspect_mesh(two_bodies)[1]["genus"] == 1, "a sphere (genus 0) and a torus (genus 1)"
    sliver = trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [2, 0, 0]], faces=[[0, 1, 2]], process=False)
    assert inspect_mesh(sliver)[0][0] == "mesh has 1 degenerate faces"


def test_inspection_of_many_bodies_agrees_with_trimesh():
    """17,000 separate tetrahedra: 68,000 vertices, beyond what 16-bit vertex numbers hold."""
    tetrahedron = trimesh.Trimesh(
        [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], process=False
    )
    count = 17_000
    copies = np.arange(count)[:, None, None]
    vertices = (tetrahedron.vertices[None] + copies * [2.0, 0.0, 0.0]).reshape(-1, 3)
    mesh = trimesh.Trimesh(vertices, (tetrahedron.faces[None] + 4 * copies).reshape(-1, 3), process=False)
    problems, facts = inspect_mesh(mesh)
    assert problems == [] and facts["watertight"] and mesh.is_watertight
    assert facts["components"] == mesh.body_count == count
    assert facts["euler_number"] == mesh.euler_number == 2 * count
    assert facts["extents"] == pytest.approx(mesh.extents.tolist())

import numpy as np
import pytest
import trimesh

from orfeas_pipelines.lib.compare import (
    MATCH_THRESHOLD,
    chamfer_distance,
    compare_batch_to_sequential,
    recheck_sample,
    same_mesh,
    silhouette,
    silhouette_iou,
)


@pytest.fixture(scope="module")
def blob() -> trimesh.Trimesh:
    return trimesh.creation.capsule(height=1.0, radius=0.4, count=[24, 24])


def test_identical_meshes_are_at_distance_zero(blob):
    assert chamfer_distance(blob, blob) == 0.0
    assert chamfer_distance(blob, blob.copy()) == 0.0


def test_a_retessellated_copy_of_the_same_surface_matches():
    coarse = trimesh.creation.icosphere(subdivisions=4)
    fine = trimesh.creation.icosphere(subdivisions=5)
    assert 0 < chamfer_distance(coarse, fine) < MATCH_THRESHOLD / 2


@pytest.mark.parametrize("change", ["shift", "scale"])
def test_a_different_mesh_is_detected(blob, change):
    other = blob.copy()
    if change == "shift":
        other.apply_translation([0.05 * np.linalg.norm(blob.extents), 0, 0])
    else:
        other.apply_scale(1.1)
    assert chamfer_distance(blob, other) > MATCH_THRESHOLD


def test_chamfer_is_symmetric_and_deterministic(blob):
    other = blob.copy().apply_scale(1.05)
    first = chamfer_distance(blob, other)
    assert first == chamfer_distance(other, blob) == chamfer_distance(blob, other)


def test_chamfer_refuses_an_empty_mesh(blob):
    with pytest.raises(ValueError, match="second mesh has no surface"):
        chamfer_distance(blob, trimesh.Trimesh())


def test_no_mesh_on_either_side_is_never_a_match(blob):
    moved = blob.copy().apply_translation([1, 0, 0])
    agreement = compare_batch_to_sequential(
        {"a": blob, "b": None, "c": blob, "d": None},
        {"a": blob.copy(), "b": None, "c": moved, "d": blob},
    )
    assert (agreement.matched, agreement.compared) == (1, 4)
    assert agreement.distances["a"] == 0.0 and agreement.distances["b"] is None
    assert agreement.distances["c"] > MATCH_THRESHOLD and agreement.distances["d"] is None
    assert same_mesh(None, None) == (None, "no mesh from either run")
    assert same_mesh(blob, None)[1] == "no mesh from the re-run"
    assert not agreement.passed


def test_batch_agreement_needs_strictly_more_than_the_required_fraction(blob):
    batch = {f"k{index}": blob for index in range(100)}
    assert not compare_batch_to_sequential(batch, dict(batch, k0=None)).passed
    assert compare_batch_to_sequential(batch, dict(batch)).passed
    assert compare_batch_to_sequential({"only": blob}, {"only": blob}).passed
    assert not compare_batch_to_sequential({}, {}).passed


def test_recheck_sample_spreads_over_batches_and_positions():
    batches = [[f"b{batch}-{position}" for position in range(8)] for batch in range(4)]
    sample = recheck_sample(batches, 4)
    assert sample == ["b0-0", "b1-1", "b2-2", "b3-3"]
    assert len(set(recheck_sample(batches, 40))) == 32


def test_successive_windows_sample_successive_positions():
    batches = [[f"{window}/{position}" for position in range(8)] for window in range(3)]
    picks = [recheck_sample([batch], 1, rotation=window)[0] for window, batch in enumerate(batches)]
    assert picks == ["0/0", "1/1", "2/2"]


def test_recheck_sample_skips_batches_of_one_and_tiny_windows():
    assert recheck_sample([["alone"]], 4) == []
    assert recheck_sample([["a"], ["b", "c"]], 1) == ["b"]
    assert recheck_sample([], 3) == [] and recheck_sample([["a", "b"]], 0) == []


def test_silhouette_of_a_box_fills_its_frame_and_follows_the_axes():
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    assert silhouette(box, 10, 20).all()
    wedge = trimesh.Trimesh(
        vertices=[[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], faces=[[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]
    )
    seen = silhouette(wedge, 20, 20)
    assert seen[1, 1] and seen[18, 1] and seen[18, 18] and not seen[1, 18]


def test_silhouette_iou_compares_shapes_after_fitting_bounding_boxes():
    box = trimesh.creation.box(extents=(2.0, 1.0, 0.5))
    rectangle = np.zeros((50, 80), dtype=bool)
    rectangle[10:30, 15:55] = True
    assert silhouette_iou(box, rectangle) == pytest.approx(1.0)
    rows, cols = np.mgrid[:60, :60]
    disk = (rows - 30) ** 2 + (cols - 30) ** 2 < 25**2
    assert silhouette_iou(box, disk) < 0.85
    with pytest.raises(ValueError, match="at least one foreground pixel"):
        silhouette_iou(box, np.zeros((5, 5), dtype=bool))


def test_identical_meshes_match_without_sampling_and_a_tiny_change_is_still_measured(blob, monkeypatch):
    from orfeas_pipelines.lib import compare

    sampled = []
    monkeypatch.setattr(compare, "chamfer_distance", lambda a, b: sampled.append(1) or 0.5)
    assert same_mesh(blob, blob.copy()) == (0.0, None) and not sampled
    nudged = blob.copy()
    nudged.vertices[0] += 1e-9
    assert same_mesh(blob, nudged)[0] == 0.5 and sampled == [1], "not identical: the Chamfer distance decides"

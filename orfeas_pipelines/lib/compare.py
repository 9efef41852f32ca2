"""Telling whether two meshes are the same shape, and how well a mesh matches its mask.

Used by the blocking batch check and the generator benchmark: an image must give the same
mesh whatever batch it is generated in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import trimesh
from PIL import Image, ImageDraw

MATCH_THRESHOLD = 0.01
"""Largest Chamfer distance, as a fraction of the bounding-box diagonal, for "same mesh".

Measured with the defaults below: identical meshes are exactly 0 apart; two tessellations
of one sphere (icosphere 4 vs 5) 0.0035, the sampling noise floor; that sphere moved by
2% of its diagonal 0.011. So 0.01 sits about 3x above the noise and flags a change of
about 2% of the object's size (2-3 voxels at resolution 128), while float-level
differences such as GPU nondeterminism pass.
"""

SAMPLE_SEED = 0
TARGET_DENSITY = 4
"""Each mesh is sampled this many times more densely as a target than as a query, which
halves the sampling noise of the nearest-neighbour distances."""

SILHOUETTE_SUPERSAMPLE = 4


def chamfer_distance(a: trimesh.Trimesh, b: trimesh.Trimesh, samples: int = 4096) -> float:
    """Symmetric Chamfer distance between two surfaces, relative to the diagonal of their
    joint bounding box. Deterministic: surfaces are sampled with a fixed seed."""
    from scipy.spatial import cKDTree

    for name, mesh in (("first", a), ("second", b)):
        if len(mesh.faces) == 0 or mesh.area <= 0:
            raise ValueError(f"cannot compare meshes: the {name} mesh has no surface")
    corners = np.vstack([a.bounds, b.bounds])
    diagonal = float(np.linalg.norm(corners.max(axis=0) - corners.min(axis=0)))
    query_a, target_a = _surface_points(a, samples)
    query_b, target_b = _surface_points(b, samples)
    a_to_b = cKDTree(target_b).query(query_a)[0].mean()
    b_to_a = cKDTree(target_a).query(query_b)[0].mean()
    return float((a_to_b + b_to_a) / 2 / diagonal)


def same_mesh(batched: trimesh.Trimesh | None, again: trimesh.Trimesh | None) -> tuple[float | None, str | None]:
    """(Chamfer distance, None) when two runs of one image gave the same mesh, else the reason.

    A mesh on one side only is a mismatch; so is no mesh on either side, since nothing was
    compared (the check samples only images whose batched run produced a mesh).
    """
    if batched is None or again is None:
        side = "either run" if batched is None and again is None else ("the batched run" if batched is None else "the re-run")
        return None, f"no mesh from {side}"
    if _identical(batched, again):
        return 0.0, None  # a deterministic generator gives the same arrays: no surface sampling needed
    distance = chamfer_distance(batched, again)
    if distance > MATCH_THRESHOLD:
        return distance, f"Chamfer distance {distance:.4f} over the threshold {MATCH_THRESHOLD}"
    return distance, None


def _identical(a: trimesh.Trimesh, b: trimesh.Trimesh) -> bool:
    """The same vertices and faces, exactly (their Chamfer distance is 0)."""
    return np.array_equal(a.faces, b.faces) and np.array_equal(a.vertices, b.vertices)


@dataclass
class BatchAgreement:
    """How many keys gave the same mesh batched and one by one."""

    matched: int
    compared: int
    distances: dict[str, float | None]
    passed: bool

    @property
    def fraction(self) -> float:
        return self.matched / self.compared if self.compared else 1.0


def compare_batch_to_sequential(
    batch: Mapping[str, trimesh.Trimesh | None],
    sequential: Mapping[str, trimesh.Trimesh | None],
    required_fraction: float = 0.99,
) -> BatchAgreement:
    """Match meshes key by key with `same_mesh`; passes when strictly more than
    `required_fraction` match. Nothing compared is no evidence, so it does not pass."""
    distances: dict[str, float | None] = {}
    matched = 0
    keys = sorted(set(batch) | set(sequential))
    for key in keys:
        distances[key], reason = same_mesh(batch.get(key), sequential.get(key))
        matched += reason is None
    passed = bool(keys) and matched / len(keys) > required_fraction
    return BatchAgreement(matched=matched, compared=len(keys), distances=distances, passed=passed)


def recheck_sample(batches: Sequence[Sequence[str]], count: int, rotation: int = 0) -> list[str]:
    """Up to `count` keys drawn across batches and batch positions.

    The i-th pick takes the batch at an even spread through the window and, in it, the
    position `rotation + i` (wrapping), so the sample covers first, middle and last positions
    as well as early and late batches; successive windows pass successive rotations, so a
    run's one-per-window samples still visit every position. A batch of one image is
    sequential by construction and never sampled; nor is a window with fewer than two images.
    """
    candidates = [list(batch) for batch in batches if len(batch) > 1]
    if count <= 0 or not candidates:
        return []
    picks: list[str] = []
    total = sum(len(batch) for batch in candidates)
    for index in range(min(count, total)):
        batch = candidates[(index * len(candidates)) // min(count, total)]
        position = (rotation + index) % len(batch)
        for offset in range(len(batch)):
            key = batch[(position + offset) % len(batch)]
            if key not in picks:
                picks.append(key)
                break
    return picks


def silhouette_iou(mesh: trimesh.Trimesh, mask: np.ndarray) -> float:
    """IoU of the mesh's orthographic silhouette (seen along -Z) and a (H, W) bool mask,
    after fitting the silhouette's bounding box onto the mask's."""
    crop = _cropped(mask)
    covered = silhouette(mesh, *crop.shape)
    return float((crop & covered).sum() / (crop | covered).sum())


def silhouette(mesh: trimesh.Trimesh, height: int, width: int) -> np.ndarray:
    """The mesh seen along -Z as a (height, width) bool image whose edges are its bounding
    box: image column is +X, image row (downwards) is -Y. Pixels at least half covered count."""
    s = SILHOUETTE_SUPERSAMPLE
    canvas = Image.new("L", (width * s, height * s), 0)
    if len(mesh.faces):
        lower, upper = mesh.bounds
        span = np.maximum(upper - lower, 1e-12)
        x = (mesh.vertices[:, 0] - lower[0]) / span[0] * width * s
        y = (upper[1] - mesh.vertices[:, 1]) / span[1] * height * s
        draw = ImageDraw.Draw(canvas)
        for triangle in np.stack([x[mesh.faces], y[mesh.faces]], axis=2).tolist():
            draw.polygon([tuple(point) for point in triangle], fill=255)
    return np.asarray(canvas, dtype=np.float32).reshape(height, s, width, s).mean(axis=(1, 3)) >= 127.5


def _cropped(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError("mask must be a 2-D boolean array with at least one foreground pixel")
    rows, cols = np.nonzero(mask)
    return mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _surface_points(mesh: trimesh.Trimesh, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Query points, and a denser target set that contains them (so identical meshes give 0)."""
    query, _ = trimesh.sample.sample_surface(mesh, samples, seed=SAMPLE_SEED)
    extra, _ = trimesh.sample.sample_surface(mesh, samples * (TARGET_DENSITY - 1), seed=SAMPLE_SEED + 1)
    return query, np.vstack([query, extra])

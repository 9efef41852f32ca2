"""Writing meshes to the contract's file formats, and a small preview picture of each.

Files are written to a temporary name in the same folder and renamed, so a reader never
sees half a file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import numpy as np
import trimesh
from PIL import Image, ImageDraw

from orfeas_pipelines.lib.home import write_bytes_atomic

MESH_FORMATS = ("stl", "glb", "obj", "ply")

_LIGHT = np.array([-0.4, 0.5, 1.0]) / np.linalg.norm([-0.4, 0.5, 1.0])
_AMBIENT = 0.35
_PLAIN_COLOUR = np.array([180.0, 180.0, 190.0])


def export_mesh(mesh: trimesh.Trimesh, out_dir: Path, stem: str, formats: Iterable[str]) -> dict[str, Path]:
    """Write `out_dir/<stem>.<fmt>` for each format; returns {format: path}.

    STL is binary; GLB, OBJ and PLY carry the vertex colours. All formats are checked
    before anything is written.
    """
    formats = list(dict.fromkeys(formats))
    unknown = [fmt for fmt in formats if fmt not in MESH_FORMATS]
    if unknown:
        raise ValueError(f"unknown mesh format {unknown[0]!r}: choose from {', '.join(MESH_FORMATS)}")
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise ValueError(f"file stem {stem!r} must be a plain file name without folders")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt in formats:
        data = mesh.export(file_type=fmt)
        path = out_dir / f"{stem}.{fmt}"
        write_bytes_atomic(path, data.encode() if isinstance(data, str) else data)
        written[fmt] = path
    return written


def render_preview(mesh: trimesh.Trimesh, path: Path, size: int = 256) -> Path:
    """A size x size RGBA PNG of the mesh as the camera sees it (orthographic, along -Z).

    Painter's algorithm: front-facing triangles drawn from far to near, each filled with
    its mean vertex colour under Lambert shading from a light above-left of the camera.
    """
    if len(mesh.faces) == 0:
        raise ValueError("cannot render a preview of an empty mesh")
    margin = max(2, size // 32)
    lower, upper = mesh.bounds
    span = float(max(upper[0] - lower[0], upper[1] - lower[1])) or 1.0
    scale = (size - 2 * margin) / span
    centre = (lower + upper) / 2
    columns = (mesh.vertices[:, 0] - centre[0]) * scale + size / 2
    rows = (centre[1] - mesh.vertices[:, 1]) * scale + size / 2
    normals = mesh.face_normals
    front = np.nonzero(normals[:, 2] > 0)[0]
    order = front[np.argsort(mesh.triangles_center[front, 2], kind="stable")]
    shade = _AMBIENT + (1 - _AMBIENT) * np.clip(normals[order] @ _LIGHT, 0, 1)
    colours = np.clip(_face_colours(mesh)[order] * shade[:, None], 0, 255).astype(np.uint8)

    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    corners = np.stack([columns[mesh.faces[order]], rows[mesh.faces[order]]], axis=2)
    for triangle, colour in zip(corners.tolist(), colours.tolist()):
        draw.polygon([tuple(point) for point in triangle], fill=(*colour, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _face_colours(mesh: trimesh.Trimesh) -> np.ndarray:
    if mesh.visual.kind == "vertex":
        return mesh.visual.vertex_colors[:, :3][mesh.faces].astype(float).mean(axis=1)
    if mesh.visual.kind == "face":
        return mesh.visual.face_colors[:, :3].astype(float)
    return np.broadcast_to(_PLAIN_COLOUR, (len(mesh.faces), 3))

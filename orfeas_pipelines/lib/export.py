"""Writing meshes to the contract's file formats.

GLB, OBJ and PLY keep the unit frame (centred, largest side 1, a metre in glTF); STL is in
millimetres with its largest side `size_mm`, as slicers read it. GLB is written here rather
than by trimesh so that it is what the glTF specification asks for: linear `COLOR_0`, unit
vertex normals and every bufferView's target (the Khronos validator reports nothing). OBJ
and PLY carry the sRGB vertex colours as they are. Files are written to a temporary name in
the same folder and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import numbers
import struct
from pathlib import Path
from typing import Iterable

import numpy as np
import trimesh

from orfeas_pipelines.lib.home import write_bytes_atomic
from orfeas_pipelines.lib.meshes import FaceGeometry, squared_lengths

MESH_FORMATS = ("stl", "glb", "obj", "ply")
DEFAULT_SIZE_MM = 100.0
"""The largest side of an STL in millimetres unless the job says otherwise."""

_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_FLOAT, _UNSIGNED_INT = 5126, 5125
_TRIANGLES = 4


def export_mesh(
    mesh: trimesh.Trimesh, out_dir: Path, stem: str, formats: Iterable[str], size_mm: float = DEFAULT_SIZE_MM
) -> dict[str, Path]:
    """Write `out_dir/<stem>.<fmt>` for each format; returns {format: path}.

    STL is binary, in millimetres, centred, its largest side `size_mm`; the other formats are
    written in the mesh's own (unit) frame. Formats, stem and size are all checked before
    anything is written.
    """
    if not stem or Path(stem).name != stem or stem in (".", ".."):
        raise ValueError(f"file stem {stem!r} must be a plain file name without folders")
    encoded = encode_mesh(mesh, formats, size_mm)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for fmt, data in encoded.items():
        written[fmt] = out_dir / f"{stem}.{fmt}"
        write_bytes_atomic(written[fmt], data)
    return written


def encode_mesh(
    mesh: trimesh.Trimesh, formats: Iterable[str], size_mm: float = DEFAULT_SIZE_MM, geometry: FaceGeometry | None = None
) -> dict[str, bytes | bytearray]:
    """Each format's file contents (bytes-like), as `export_mesh` writes them; pass the
    mesh's `FaceGeometry` when the caller has it (validation computed it)."""
    formats = list(dict.fromkeys(formats))
    unknown = [fmt for fmt in formats if fmt not in MESH_FORMATS]
    if unknown:
        raise ValueError(f"unknown mesh format {unknown[0]!r}: choose from {', '.join(MESH_FORMATS)}")
    if isinstance(size_mm, bool) or not isinstance(size_mm, numbers.Real) or not math.isfinite(size_mm) or size_mm <= 0:
        raise ValueError(f"size_mm {size_mm!r} must be a positive number of millimetres")
    if len(mesh.faces) == 0:
        raise ValueError("cannot export an empty mesh")
    geometry = geometry or FaceGeometry.of(mesh)
    return {fmt: _encoded(mesh, fmt, float(size_mm), geometry) for fmt in formats}


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in 0..1 to linear light (the IEC 61966-2-1 curve glTF names)."""
    srgb = np.asarray(srgb, dtype=np.float64)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


_LINEAR_OF_SRGB_BYTE = srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)
"""Linear light of each 8-bit sRGB value: a lookup costs a tenth of the curve per vertex."""


def glb_bytes(mesh: trimesh.Trimesh, geometry: FaceGeometry | None = None) -> bytearray:
    """glTF 2.0 binary of one mesh: float positions (with bounds), unit vertex normals,
    linear `COLOR_0` when the mesh has vertex colours, uint32 triangle indices.

    Each array is written once, straight into the file's buffer (every piece is a multiple
    of 4 bytes, so none needs padding): copies of a megabyte-sized file cost page faults.
    """
    if len(mesh.faces) == 0:
        raise ValueError("cannot write an empty mesh as GLB")
    geometry = geometry or FaceGeometry.of(mesh)
    position_rows = geometry.vertices.astype(np.float32)
    attributes = {"POSITION": position_rows.T, "NORMAL": _unit_normals(geometry).T}
    if mesh.visual.kind == "vertex":
        attributes["COLOR_0"] = _LINEAR_OF_SRGB_BYTE[np.asarray(mesh.visual.vertex_colors)[:, :3]]
    arrays = [*attributes.items(), ("indices", geometry.faces.T)]

    views, accessors, blob_length = [], [], 0
    for name, values in arrays:
        views.append(
            {
                "buffer": 0,
                "byteOffset": blob_length,
                "byteLength": values.size * 4,
                "target": _ELEMENT_ARRAY_BUFFER if name == "indices" else _ARRAY_BUFFER,
            }
        )
        blob_length += values.size * 4
        accessor = {
            "bufferView": len(views) - 1,
            "componentType": _UNSIGNED_INT if name == "indices" else _FLOAT,
            "count": values.size if name == "indices" else len(values),
            "type": "SCALAR" if name == "indices" else "VEC3",
        }
        if name == "POSITION":
            accessor["min"] = position_rows.min(axis=1).tolist()
            accessor["max"] = position_rows.max(axis=1).tolist()
        accessors.append(accessor)
    primitive = {
        "attributes": {name: index for index, name in enumerate(attributes)},
        "indices": len(accessors) - 1,
        "mode": _TRIANGLES,
    }
    document = {
        "asset": {"version": "2.0", "generator": "orfeas-pipelines"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [primitive]}],
        "buffers": [{"byteLength": blob_length}],
        "bufferViews": views,
        "accessors": accessors,
    }
    text = json.dumps(document, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    blob_start = 12 + 8 + len(text) + 8
    data = bytearray(blob_start + blob_length)
    struct.pack_into("<4sII", data, 0, b"glTF", 2, len(data))
    struct.pack_into("<I4s", data, 12, len(text), b"JSON")
    data[20 : 20 + len(text)] = text
    struct.pack_into("<I4s", data, blob_start - 8, blob_length, b"BIN\0")
    for (name, values), view in zip(arrays, views):
        component = "<u4" if name == "indices" else "<f4"
        target = np.frombuffer(data, component, count=values.size, offset=blob_start + view["byteOffset"])
        target.reshape(values.shape)[...] = values
    return data


def _encoded(mesh: trimesh.Trimesh, fmt: str, size_mm: float, geometry: FaceGeometry) -> bytes | bytearray:
    if fmt == "glb":
        return glb_bytes(mesh, geometry)
    if fmt == "stl":
        return _stl_bytes(_in_millimetres(geometry, size_mm))
    data = mesh.export(file_type=fmt)
    return data.encode() if isinstance(data, str) else data


def _in_millimetres(geometry: FaceGeometry, size_mm: float) -> FaceGeometry:
    """The geometry centred at the origin with the largest side `size_mm` (STL carries no
    unit), in the float32 an STL stores."""
    vertices = geometry.vertices
    lower, upper = vertices.min(axis=1), vertices.max(axis=1)
    largest = float((upper - lower).max())
    if not math.isfinite(largest) or largest <= 0:
        raise ValueError(f"cannot scale a mesh whose largest side is {largest} to {size_mm} mm")
    centre = ((lower + upper) / 2)[:, None]
    return FaceGeometry.of_rows(((vertices - centre) * (size_mm / largest)).astype(np.float32), geometry.faces)


_STL_RECORD = np.dtype([("normal", "<f4", 3), ("corners", "<f4", (3, 3)), ("attribute", "<u2")])


def _stl_bytes(geometry: FaceGeometry) -> bytearray:
    """Binary STL of float32 geometry, the records written straight into the file's buffer.
    Facet normals come from the stored float32 coordinates, so a sliver face's normal agrees
    with what a reader (admesh, a slicer) recomputes from them."""
    count = geometry.faces.shape[1]
    data = bytearray(84 + _STL_RECORD.itemsize * count)  # a zero header and zero attributes
    struct.pack_into("<I", data, 80, count)
    records = np.frombuffer(data, dtype=_STL_RECORD, offset=84)
    records["normal"] = geometry.unit_face_normals().T
    records["corners"] = geometry.corners.transpose(2, 1, 0)
    return data


def _unit_normals(geometry: FaceGeometry) -> np.ndarray:
    """(3, V) area-weighted vertex normals of unit length; a vertex whose faces cancel out
    (no direction) gets +Z rather than a zero vector, which glTF forbids."""
    vertex_count = geometry.vertices.shape[1]
    summed = np.stack(
        [sum(np.bincount(corner, weights, vertex_count) for corner in geometry.faces) for weights in geometry.cross]
    )
    lengths = np.sqrt(squared_lengths(summed))
    return np.where(lengths > 1e-12, summed / np.maximum(lengths, 1e-300), [[0.0], [0.0], [1.0]])

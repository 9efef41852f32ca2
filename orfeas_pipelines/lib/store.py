"""Generated meshes by partition key: a PLY (keeps vertex colours) plus a JSON record.

The record says how the mesh was made (backend, version, batch) or why it failed, so the
export step and the nightly re-verification read the same truth the mesh step wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orfeas_pipelines.lib.home import OrfeasHome, write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    import trimesh


def mesh_path(home: OrfeasHome, partition_key: str) -> Path:
    return home.meshes / f"{partition_key}.ply"


def record_path(home: OrfeasHome, partition_key: str) -> Path:
    return home.meshes / f"{partition_key}.json"


def save_generated(
    home: OrfeasHome,
    partition_key: str,
    mesh: trimesh.Trimesh | None,
    record: dict[str, Any],
) -> None:
    """Store one item's outcome; a failed item keeps its record and loses any stale mesh."""
    target = mesh_path(home, partition_key)
    target.parent.mkdir(parents=True, exist_ok=True)
    if mesh is None:
        target.unlink(missing_ok=True)
    else:
        write_bytes_atomic(target, mesh.export(file_type="ply"))
    write_json_atomic(record_path(home, partition_key), {"partition_key": partition_key, **record})


def load_record(home: OrfeasHome, partition_key: str) -> dict[str, Any] | None:
    path = record_path(home, partition_key)
    return json.loads(path.read_text()) if path.exists() else None


def load_mesh(home: OrfeasHome, partition_key: str) -> trimesh.Trimesh | None:
    import trimesh

    path = mesh_path(home, partition_key)
    if not path.exists():
        return None
    return trimesh.load(path, file_type="ply", force="mesh", process=False)

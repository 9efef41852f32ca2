import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from orfeas_pipelines.lib.batching import generate_in_batches
from orfeas_pipelines.lib.export import MESH_FORMATS, export_mesh, glb_bytes, srgb_to_linear
from orfeas_pipelines.lib.generation.base import GenerationRequest, create_generator
from orfeas_pipelines.lib.images import load_image
from orfeas_pipelines.lib.samples import sample_image_paths

REPO = Path(__file__).resolve().parents[2]
VALIDATOR_MODULES = REPO / ".tools" / "node_modules"
VALIDATOR_SCRIPT = REPO / "tools" / "validate_gltf.js"


def two_coloured_sphere() -> trimesh.Trimesh:
    """Red on the -X half, blue on the +X half."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    colours = np.where(sphere.vertices[:, :1] < 0, [[220, 20, 20, 255]], [[20, 20, 220, 255]])
    sphere.visual.vertex_colors = colours.astype(np.uint8)
    return sphere


@pytest.fixture(scope="module")
def sample_meshes() -> dict[str, trimesh.Trimesh]:
    """The bundled samples through the default generator, at a quick resolution."""
    requests = [
        GenerationRequest(key=path.stem, image=load_image(path), resolution=64, seed=0) for path in sample_image_paths()
    ]
    results = generate_in_batches(create_generator("inflate", device="cpu"), requests)
    assert all(result.ok for result in results), [result.error for result in results]
    return {request.key: result.mesh for request, result in zip(requests, results)}


def test_every_format_round_trips_through_trimesh(tmp_path):
    sphere = two_coloured_sphere()
    written = export_mesh(sphere, tmp_path, "ball", MESH_FORMATS)
    assert set(written) == set(MESH_FORMATS)
    for fmt, path in written.items():
        assert path == tmp_path / f"ball.{fmt}"
        loaded = trimesh.load(path, force="mesh")
        assert len(loaded.faces) == len(sphere.faces), fmt
        assert loaded.is_watertight, fmt
        expected = sphere.bounds * (50 if fmt == "stl" else 1)
        assert np.allclose(loaded.bounds, expected, atol=1e-4), fmt


@pytest.mark.parametrize("size_mm", [100, 37.5])
def test_stl_is_in_millimetres_with_the_largest_side_size_mm_and_the_others_keep_the_unit_frame(tmp_path, size_mm):
    box = trimesh.creation.box(extents=[0.5, 1.0, 0.25])
    box.apply_translation([3, 2, 1])
    written = export_mesh(box, tmp_path, "box", ["stl", "ply"], size_mm=size_mm)
    stl = trimesh.load(written["stl"])
    assert np.allclose(stl.extents, [size_mm / 2, size_mm, size_mm / 4])
    assert np.allclose(stl.bounds.mean(axis=0), 0)
    assert np.allclose(trimesh.load(written["ply"]).bounds, box.bounds)


@pytest.mark.parametrize("size_mm", [0, -5, float("nan"), float("inf"), "100", True])
def test_a_size_that_is_not_a_positive_number_is_refused_before_anything_is_written(tmp_path, size_mm):
    with pytest.raises(ValueError, match="size_mm .* must be a positive number of millimetres"):
        export_mesh(two_coloured_sphere(), tmp_path, "ball", ["glb", "stl"], size_mm=size_mm)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["obj", "ply"])
def test_obj_and_ply_keep_the_srgb_vertex_colours(tmp_path, fmt):
    sphere = two_coloured_sphere()
    loaded = trimesh.load(export_mesh(sphere, tmp_path, "ball", [fmt])[fmt], force="mesh")
    left = loaded.vertices[:, 0] < -0.5
    right = loaded.vertices[:, 0] > 0.5
    assert (loaded.visual.vertex_colors[left, :3] == [220, 20, 20]).all()
    assert (loaded.visual.vertex_colors[right, :3] == [20, 20, 220]).all()


def glb_document(data: bytes) -> tuple[dict, bytes]:
    magic, version, total = struct.unpack_from("<4sII", data)
    assert (magic, version, total) == (b"glTF", 2, len(data))
    json_length, json_kind = struct.unpack_from("<I4s", data, 12)
    assert json_kind == b"JSON"
    document = json.loads(data[20 : 20 + json_length])
    blob_length, blob_kind = struct.unpack_from("<I4s", data, 20 + json_length)
    assert blob_kind == b"BIN\0"
    return document, data[28 + json_length : 28 + json_length + blob_length]


def accessor_values(document: dict, blob: bytes, index: int) -> np.ndarray:
    accessor = document["accessors"][index]
    view = document["bufferViews"][accessor["bufferView"]]
    dtype = {5126: np.float32, 5125: np.uint32}[accessor["componentType"]]
    width = {"SCALAR": 1, "VEC3": 3}[accessor["type"]]
    start = view["byteOffset"]
    return np.frombuffer(blob[start : start + view["byteLength"]], dtype=dtype).reshape(-1, width)


def test_glb_colours_are_linear_its_normals_unit_and_every_buffer_view_has_a_target():
    sphere = two_coloured_sphere()
    document, blob = glb_document(glb_bytes(sphere))
    attributes = document["meshes"][0]["primitives"][0]["attributes"]
    assert set(attributes) == {"POSITION", "NORMAL", "COLOR_0"}
    colours = accessor_values(document, blob, attributes["COLOR_0"])
    assert np.allclose(colours, srgb_to_linear(sphere.visual.vertex_colors[:, :3] / 255), atol=1e-6)
    # 220 in sRGB is 0.716 in linear light, 20 is 0.0070: not the bytes divided by 255.
    assert np.isclose(colours.max(), 0.7157, atol=1e-3) and np.isclose(colours.min(), 0.00699, atol=1e-4)
    normals = accessor_values(document, blob, attributes["NORMAL"])
    assert np.allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-6)
    assert np.allclose(normals, sphere.vertices, atol=0.05)
    targets = [view["target"] for view in document["bufferViews"]]
    assert targets == [34962, 34962, 34962, 34963]


def test_srgb_to_linear_follows_the_standard_curve():
    assert np.allclose(srgb_to_linear([0.0, 0.04045, 0.5, 1.0]), [0.0, 0.04045 / 12.92, 0.21404, 1.0], atol=1e-5)


def test_a_mesh_without_colours_gets_no_colour_attribute():
    document, _ = glb_document(glb_bytes(trimesh.creation.icosphere()))
    assert set(document["meshes"][0]["primitives"][0]["attributes"]) == {"POSITION", "NORMAL"}


def validator_reports(paths: list[Path]) -> list[dict]:
    if not (VALIDATOR_MODULES / "gltf-validator").is_dir() or shutil.which("node") is None:
        pytest.fail(
            "the Khronos glTF Validator is not installed: run `make validators` "
            "(node and npm, then npm install --prefix .tools gltf-validator)"
        )
    completed = subprocess.run(
        ["node", str(VALIDATOR_SCRIPT), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(VALIDATOR_MODULES)},
    )
    assert completed.returncode == 0, completed.stderr
    return [json.loads(line) for line in completed.stdout.splitlines()]


def test_the_khronos_validator_reports_nothing_for_any_samples_glb(tmp_path, sample_meshes):
    """The samples' meshes, and one without colours (Hunyuan3D-2's meshes have none)."""
    meshes = {**sample_meshes, "plain": trimesh.creation.icosphere()}
    paths = [export_mesh(mesh, tmp_path, name, ["glb"])["glb"] for name, mesh in meshes.items()]
    reports = validator_reports(paths)
    assert len(reports) == len(paths) == len(sample_image_paths()) + 1
    for report in reports:
        counts = [report[kind] for kind in ("errors", "warnings", "infos", "hints")]
        assert counts == [0, 0, 0, 0], report
        assert trimesh.load(report["file"], force="mesh").is_watertight


def test_the_validator_does_report_a_broken_glb(tmp_path):
    """The validator check above can fail: a GLB without bufferView targets gets hints."""
    sloppy = tmp_path / "sloppy.glb"
    sloppy.write_bytes(trimesh.creation.icosphere().export(file_type="glb"))
    (report,) = validator_reports([sloppy])
    assert report["hints"] > 0


def admesh_report(path: Path) -> dict[str, float]:
    if shutil.which("admesh") is None:
        pytest.fail("admesh is not installed: run `make validators` (as root: apt-get install -y admesh)")
    completed = subprocess.run(["admesh", str(path)], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    numbers = {}
    for label in ("Degenerate facets", "Edges fixed", "Facets removed", "Facets added", "Facets reversed",
                  "Backwards edges", "Normals fixed", "Number of parts"):
        numbers[label] = int(re.search(rf"{label}\s*:\s*(\d+)", completed.stdout).group(1))
    for axis in "XYZ":
        found = re.search(rf"Min {axis} =\s*(\S+),\s*Max {axis} =\s*(\S+)", completed.stdout)
        numbers[f"size {axis}"] = float(found.group(2)) - float(found.group(1))
    return numbers


def test_admesh_needs_no_repair_for_any_samples_stl_and_reads_the_size_in_millimetres(tmp_path, sample_meshes):
    for name, mesh in sample_meshes.items():
        report = admesh_report(export_mesh(mesh, tmp_path, name, ["stl"], size_mm=80)["stl"])
        repairs = {label: report[label] for label in ("Degenerate facets", "Edges fixed", "Facets removed",
                                                      "Facets added", "Facets reversed", "Backwards edges", "Normals fixed")}
        assert set(repairs.values()) == {0}, (name, repairs)
        assert report["Number of parts"] == mesh.body_count, name
        assert max(report[f"size {axis}"] for axis in "XYZ") == pytest.approx(80, abs=0.01), name


@pytest.mark.slow
def test_prusaslicer_slices_every_samples_stl_as_written(tmp_path, sample_meshes):
    if shutil.which("prusa-slicer") is None:
        pytest.fail("PrusaSlicer is not installed: run `make validators` (as root: apt-get install -y prusa-slicer)")
    paths = [export_mesh(mesh, tmp_path, name, ["stl"], size_mm=40)["stl"] for name, mesh in sample_meshes.items()]
    info = subprocess.run(["prusa-slicer", "--info", *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr[-2000:]
    assert info.stdout.count("manifold = yes") == len(paths), info.stdout
    sizes = [max(float(value) for value in re.findall(rf"size_{axis} = (\S+)", info.stdout)) for axis in "xyz"]
    assert max(sizes) == pytest.approx(40, abs=0.01)
    # One plate with all of them: a slicer refuses a model it cannot print ("the print is
    # empty" for the old 1 mm STLs) and exits non-zero.
    gcode = tmp_path / "plate.gcode"
    sliced = subprocess.run(
        ["prusa-slicer", "--export-gcode", "--output", str(gcode), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sliced.returncode == 0, sliced.stdout[-2000:] + sliced.stderr[-2000:]
    assert "repair" not in (sliced.stdout + sliced.stderr).lower()
    assert gcode.stat().st_size > 100_000


def test_stl_is_binary(tmp_path):
    sphere = two_coloured_sphere()
    path = export_mesh(sphere, tmp_path, "ball", ["stl"])["stl"]
    assert path.stat().st_size == 84 + 50 * len(sphere.faces)


def test_an_empty_mesh_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="cannot export an empty mesh"):
        export_mesh(trimesh.Trimesh(), tmp_path, "nothing", MESH_FORMATS)
    assert list(tmp_path.iterdir()) == []


def test_numpy_sizes_are_numbers_too(tmp_path):
    path = export_mesh(two_coloured_sphere(), tmp_path, "ball", ["stl"], size_mm=np.int64(20))["stl"]
    assert max(trimesh.load(path).extents) == pytest.approx(20)


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


def test_meshes_honour_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        written = export_mesh(two_coloured_sphere(), tmp_path, "ball", MESH_FORMATS)
    finally:
        os.umask(previous)
    assert {path.stat().st_mode & 0o777 for path in written.values()} == {0o640}

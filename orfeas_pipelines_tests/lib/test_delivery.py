"""Delivery in two steps: files prepared under temporary names, then published or discarded."""

import os
import resource

import numpy as np
import pytest
import trimesh

from orfeas_pipelines.lib.delivery import discard, load_requests, prepare, publish
from orfeas_pipelines.lib.generation.base import GenerationResult
from orfeas_pipelines_tests.conftest import register_pending, submit_images


@pytest.fixture
def request_and_result(home, agent, instance, image_files):
    submit_images(home, agent, image_files[:1], formats=("stl", "glb"))
    [key] = register_pending(home, instance).dynamic_partitions_requests[0].partition_keys
    [request], failures = load_requests(home, [key])
    assert failures == {}
    return request, GenerationResult(key=key, mesh=trimesh.creation.icosphere(subdivisions=2), metrics={})


STATUS_FILES = ("status.json", ".status.lock")


def delivered_files(folder):
    return [path for path in folder.iterdir() if path.name not in STATUS_FILES]


def visible(folder):
    return sorted(path.name for path in delivered_files(folder) if not path.name.startswith("."))


def test_prepared_files_stay_hidden_until_published(home, request_and_result):
    request, result = request_and_result
    delivery = prepare(home, request, result)
    assert delivery.failure is None and set(delivery.outputs) == {"stl", "glb"}
    assert visible(delivery.folder) == [] and all(path.exists() for path in delivery.staged)
    stem = delivery.outputs["stl"].rsplit(".", 1)[0]

    publish(request.key, delivery)

    assert visible(delivery.folder) == sorted([f"{stem}.glb", f"{stem}.png", f"{stem}.stl"])
    assert [path.name for path in delivery.folder.iterdir() if path.name.startswith(".")] == []
    assert trimesh.load(delivery.folder / f"{stem}.stl", force="mesh").is_watertight


def test_discard_removes_every_prepared_file(home, request_and_result):
    request, result = request_and_result
    delivery = prepare(home, request, result)
    discard(delivery)
    assert delivered_files(delivery.folder) == []


def test_a_failed_rename_is_a_retryable_failure_and_leaves_nothing(home, request_and_result, monkeypatch):
    request, result = request_and_result
    delivery = prepare(home, request, result)
    monkeypatch.setattr(os, "replace", lambda *_: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    publish(request.key, delivery)
    assert delivery.failure.retryable and delivery.failure.code == "io_error"
    assert request.key in delivery.failure.message and "No space left" in delivery.failure.message
    assert delivered_files(delivery.folder) == []


def test_an_invalid_mesh_is_classified_and_writes_nothing(home, request_and_result):
    request, _ = request_and_result
    open_box = trimesh.creation.box()
    open_box.update_faces(np.arange(len(open_box.faces)) > 0)
    delivery = prepare(home, request, GenerationResult(key=request.key, mesh=open_box, metrics={}))
    assert delivery.failure.code == "invalid_mesh" and not delivery.failure.retryable
    assert "not watertight" in delivery.failure.message and delivery.pictures.startswith("![input]")
    assert not delivery.folder.exists() or visible(delivery.folder) == []


def test_previews_and_meshes_honour_the_umask(home, request_and_result):
    request, result = request_and_result
    previous = os.umask(0o027)
    try:
        delivery = publish(request.key, prepare(home, request, result))
    finally:
        os.umask(previous)
    modes = {path.stat().st_mode & 0o777 for path in delivered_files(delivery.folder)}
    assert modes == {0o640}


def test_temp_files_a_killed_run_left_are_removed_when_the_image_is_delivered_again(home, request_and_result):
    request, result = request_and_result
    killed = prepare(home, request, result)  # prepared, then the run died before publishing
    assert killed.staged
    delivery = publish(request.key, prepare(home, request, result))
    assert delivery.failure is None
    assert [path.name for path in delivery.folder.iterdir() if path.name.endswith(".tmp")] == []


def test_deliveries_reuse_the_memory_the_previous_ones_freed(home, request_and_result):
    """Without glibc keeping freed heap (`HEAP_TOP_PAD`), each 80k-face delivery here pays
    some 3,000 page faults (about 12 MB of fresh pages) for memory its predecessor gave back."""
    request, _ = request_and_result
    result = GenerationResult(key=request.key, mesh=trimesh.creation.icosphere(subdivisions=6), metrics={})
    faults = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        discard(prepare(home, request, result))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert faults[-1] < 500, faults

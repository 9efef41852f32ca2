import pytest

from orfeas_pipelines.bench.generator import bench_generator


def test_tiny_generator_bench_reports_each_field():
    rows = bench_generator(resolutions=(32,), images=2, device="cpu")
    assert len(rows) == 1
    row = rows[0]
    assert row["backend"] == "inflate" and row["device"] == "cpu"
    assert (row["resolution"], row["images"]) == (32, 2)
    assert 1 <= row["batch_size"] <= 2
    assert row["batched_s_per_image"] > 0 and row["sequential_s_per_image"] > 0
    assert row["ratio"] == pytest.approx(row["sequential_s_per_image"] / row["batched_s_per_image"])
    assert row["matched"] is True and row["max_chamfer"] == 0.0
    assert row["failed"] == 0


def test_bench_refuses_no_images():
    with pytest.raises(ValueError, match="images must be at least 1"):
        bench_generator(resolutions=(32,), images=0, device="cpu")

"""The runs benchmark measures both modes with real run processes."""

import pytest

from orfeas_pipelines.bench.runs import bench_runs


@pytest.mark.slow
def test_bench_runs_reports_both_modes_side_by_side():
    row = bench_runs(jobs=1, resolution=32)
    assert row["jobs"] == 1 and row["per_job_runs"] == 1 and row["batched_runs"] == 1
    assert row["batched_seconds"] > 0 and row["per_job_seconds"] > 0
    assert row["ratio"] == pytest.approx(row["per_job_seconds"] / row["batched_seconds"], rel=0.01)

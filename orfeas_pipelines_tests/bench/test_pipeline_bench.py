"""The pipeline benchmark times both sides alternately and splits the end-to-end run."""

import pytest

from orfeas_pipelines.bench.pipeline import bench_pipeline


@pytest.mark.slow
def test_bench_pipeline_reports_the_best_of_each_side_and_the_run_split_by_thread():
    row = bench_pipeline(images=8, resolution=48, repeats=2)
    assert row["images"] == 8 and row["runs"] == 1
    assert len(row["all_generator_s"].split("/")) == len(row["all_end_to_end_s"].split("/")) == 2
    assert row["efficiency"] == pytest.approx(row["generator_seconds"] / row["end_to_end_seconds"], abs=0.01)
    assert row["generate_s"] > 0 and row["check_s"] > 0 and row["export_cpu_s"] > 0 and row["preview_cpu_s"] > 0
    # The generating thread's stages and its idle time add up to the run; decoding is another
    # thread's, overlapped with generation.
    busy = row["generate_s"] + row["check_s"]
    assert row["generator_idle_s"] == pytest.approx(row["run_s"] - busy, abs=0.02)
    assert row["decode_s"] > 0 and row["generator_idle_s"] > 0
    assert row["end_to_end_seconds"] == pytest.approx(row["outside_runs_s"] + row["run_s"], abs=0.02)

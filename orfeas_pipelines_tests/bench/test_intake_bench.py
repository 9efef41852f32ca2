from orfeas_pipelines.bench.intake import bench_intake


def test_intake_bench_verifies_every_drop_and_reports_rates(tmp_path):
    result = bench_intake(drops=50, tmp_dir=tmp_path)
    assert result["accepted"] == 50 and result["rejected"] == 0
    assert result["tick_jobs"] == 50 and result["tick_waiting"] == 50
    assert result["files_per_second"] > 0 and result["jobs_per_second"] > 0
    assert 0 < result["tick_seconds"] < 60
    assert list(tmp_path.iterdir()) == []

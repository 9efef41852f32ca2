from orfeas_pipelines.bench.api import bench_api


def test_api_bench_measures_every_phase_and_every_stream_sees_every_change(tmp_path):
    rows = bench_api(seconds=1.0, streams=20, tmp_dir=tmp_path)
    phases = [row["phase"] for row in rows]
    assert phases == ["status", "submit 256 KiB", "events: 20 SSE streams", "status during 20 SSE streams"]
    for row in rows:
        assert row["requests"] > 0 and row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    events = rows[2]
    assert events["goal_met"] and events["requests"] == 20 * 6
    assert rows[0]["req_per_s"] > 0 and rows[1]["req_per_s"] > 0
    assert list(tmp_path.iterdir()) == []

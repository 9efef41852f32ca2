from orfeas_pipelines.bench.end_to_end import SEGMENTS, summary_rows
from orfeas_pipelines.sensors.intake import inbox_sensor


def test_the_summary_leaves_out_the_warm_up_and_gives_p50_and_p95_of_each_segment():
    rows = [{"job": "warm-up (not counted)", "total": 99.0, **{name: 99.0 for name in SEGMENTS}}]
    rows += [{"job": index, "total": float(index), **{name: index / 10 for name in SEGMENTS}} for index in range(1, 12)]
    p50, p95 = summary_rows(rows)
    assert p50["job"] == "p50 of 11" and p50["total"] == 6.0 and p50["sensor"] == 0.6
    assert p95["total"] == 10.5 and p95["settle"] == 1.05


def test_the_inbox_sensor_ticks_at_every_daemon_check():
    from dagster._daemon.sensor import MIN_INTERVAL_LOOP_TIME

    assert inbox_sensor.minimum_interval_seconds < MIN_INTERVAL_LOOP_TIME, "an interval equal to the daemon's loop skips every other check"


def test_the_end_to_end_bench_times_a_job_through_the_daemon(tmp_path):
    from orfeas_pipelines.bench.end_to_end import bench_end_to_end

    rows = bench_end_to_end(jobs=1, resolution=64, tmp_dir=tmp_path)
    assert [row["job"] for row in rows] == ["warm-up (not counted)", 1]
    for row in rows:
        assert all(row[name] >= 0 for name in SEGMENTS)
        assert abs(row["total"] - sum(row[name] for name in SEGMENTS)) < 0.1, "the segments cover the whole time"
    assert list(tmp_path.iterdir()) == [], "the temporary home is gone"

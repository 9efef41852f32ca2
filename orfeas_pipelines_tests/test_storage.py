"""The home's event log: Dagster's SQLite files, written with connections kept open."""

import dagster as dg
import pytest
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from orfeas_pipelines import storage
from orfeas_pipelines.runner import install_instance_config, open_instance, process_once
from orfeas_pipelines.storage import PooledSqliteEventLogStorage
from orfeas_pipelines_tests.conftest import submit_images


def test_a_home_instance_uses_the_pooled_event_log_and_dagster_reads_its_files(home, agent, image_files):
    config = install_instance_config(home)
    assert str(home.dagster_home.resolve()) in config.read_text()
    submit_images(home, agent, image_files[:2])
    report = process_once(home)
    with open_instance(home) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        delivered = instance.get_materialized_partitions(dg.AssetKey("mesh"))
    assert len(delivered) == 2 and len(report.run_ids) == 1

    plain = SqliteEventLogStorage(str(home.dagster_home / "history" / "runs"))
    assert {record.partition_key for record in plain.fetch_materializations(dg.AssetKey("mesh"), limit=10).records} == delivered
    assert len(plain.get_records_for_run(report.run_ids[0]).records) > 0


def test_an_existing_instance_config_is_kept(home):
    config = home.dagster_home / "dagster.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("telemetry:\n  enabled: false\n")
    install_instance_config(home)
    assert config.read_text() == "telemetry:\n  enabled: false\n"


def test_only_a_few_run_shards_stay_open_and_a_deleted_run_closes_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "OPEN_RUN_SHARDS", 2)
    events = PooledSqliteEventLogStorage(str(tmp_path))
    for run_id in ("a", "b", "c"):
        with events.run_connection(run_id) as conn:
            conn.exec_driver_sql("select 1")
    assert [name for name in events._engines if name != "index"] == ["b", "c"]
    events.delete_events("c")
    assert "c" not in events._engines
    events.dispose()
    assert not events._engines


def test_shards_stay_in_wal_mode_and_commit_without_waiting_for_the_disk(tmp_path):
    events = PooledSqliteEventLogStorage(str(tmp_path))
    for shard in ("index", "a-run"):
        with events._connect(shard) as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL; SQLite's default is 2
    events.dispose()


def test_a_planned_check_writes_the_rows_dagster_writes_with_the_event_serialized_once(tmp_path, monkeypatch):
    from dagster._core.events import AssetCheckEvaluationPlanned, DagsterEvent, DagsterEventType
    from dagster._core.events.log import EventLogEntry
    from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable

    from orfeas_pipelines.partitions import images_partitions

    keys = [f"job{index}/a.png" for index in range(50)]
    subset = images_partitions.empty_subset().with_partition_keys(keys)
    planned = AssetCheckEvaluationPlanned(asset_key=dg.AssetKey("mesh"), check_name="mesh_is_valid", partitions_subset=subset)
    event = EventLogEntry(
        error_info=None, level=20, user_message="", run_id="run-1", timestamp=1.0, job_name="mesh_job",
        dagster_event=DagsterEvent(DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED.value, "mesh_job", event_specific_data=planned),
    )
    serialized = []
    monkeypatch.setattr(storage, "serialize_value", lambda value: serialized.append(value) or dg.serialize_value(value))

    def rows(events):
        events._store_asset_check_evaluation_planned(event, 7)
        with events.index_connection() as conn:
            found = conn.execute(AssetCheckExecutionsTable.select().order_by(AssetCheckExecutionsTable.c.partition)).fetchall()
        return [tuple(value for name, value in row._mapping.items() if name not in ("id", "create_timestamp")) for row in found]

    ours = rows(PooledSqliteEventLogStorage(str(tmp_path / "ours")))
    assert len(serialized) == 1
    assert ours == rows(SqliteEventLogStorage(str(tmp_path / "dagster")))
    assert [row[2] for row in ours] == sorted(keys)


def _instance_with(events) -> dg.DagsterInstance:
    """An ephemeral instance whose event log is `events`."""
    instance = dg.DagsterInstance.ephemeral()
    instance._event_storage = events
    events.register_instance(instance)
    return instance


def _index_rows(events, table, columns) -> list[tuple]:
    with events.index_connection() as conn:
        found = conn.execute(table.select().order_by(table.c[columns[0]])).fetchall()
    return [tuple(row._mapping[column] for column in columns) for row in found]


def test_batched_asset_events_are_stored_as_dagster_stores_them_one_by_one(tmp_path):
    from dagster._core.storage.event_log.schema import AssetEventTagsTable, AssetKeyTable, SqlEventLogStorageTable

    from orfeas_pipelines.storage import batched_events

    def record(path, batched: bool):
        events = PooledSqliteEventLogStorage(str(path)) if batched else SqliteEventLogStorage(str(path))
        instance = _instance_with(events)
        with batched_events(instance):
            for index in range(5):
                instance.report_runless_asset_event(
                    dg.AssetMaterialization("source_image", partition=f"job{index}/a.png", metadata={"bytes": index},
                                            tags={"dagster/data_version": f"v{index}"})
                )
                assert batched is not bool(events.fetch_materializations(dg.AssetKey("source_image"), limit=9).records)
        latest = events.get_latest_materialization_events([dg.AssetKey("source_image")])[dg.AssetKey("source_image")]
        return (
            _index_rows(events, SqlEventLogStorageTable, ["id", "run_id", "dagster_event_type", "asset_key", "partition"]),
            _index_rows(events, AssetEventTagsTable, ["event_id", "asset_key", "key", "value"]),
            _index_rows(events, AssetKeyTable, ["asset_key"]),
            latest.asset_materialization.partition,
            [(r.partition_key, r.asset_materialization.metadata) for r in events.fetch_materializations(dg.AssetKey("source_image"), limit=9).records],
        )

    ours = record(tmp_path / "ours", batched=True)
    assert len(ours[0]) == len(ours[1]) == 5 and ours[3] == "job4/a.png"
    assert ours == record(tmp_path / "dagster", batched=False)


def test_a_table_found_once_is_not_looked_up_again_and_a_missing_one_is(tmp_path, monkeypatch):
    events = PooledSqliteEventLogStorage(str(tmp_path))
    lookups = []
    original = SqliteEventLogStorage.has_table
    monkeypatch.setattr(SqliteEventLogStorage, "has_table", lambda self, name: lookups.append(name) or original(self, name))
    assert events.has_table("asset_check_executions") and events.has_table("asset_check_executions")
    assert not events.has_table("no_such_table") and not events.has_table("no_such_table")
    assert lookups == ["asset_check_executions", "no_such_table", "no_such_table"]
    events.dispose()


def test_events_reported_before_an_error_in_a_batch_are_still_stored(tmp_path):
    events = PooledSqliteEventLogStorage(str(tmp_path))
    instance = _instance_with(events)
    with pytest.raises(OSError, match="disk gone"), events.batched():
        instance.report_runless_asset_event(dg.AssetMaterialization("source_image", partition="job0/a.png"))
        raise OSError("disk gone")
    assert [r.partition_key for r in events.fetch_materializations(dg.AssetKey("source_image"), limit=9).records] == ["job0/a.png"]

"""The quality report reads every image's outcome back from Dagster."""

import dagster as dg
import numpy as np
from PIL import Image

from orfeas_pipelines.assets.report import mesh_quality_report
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines_tests.assets.test_meshes import blank_png, run_range
from orfeas_pipelines_tests.conftest import register_pending, submit_images


def test_the_report_tables_delivered_and_failed_images_with_a_contact_sheet(home, agent, instance, image_files, tmp_path):
    submit_images(home, agent, [*image_files[:2], blank_png(tmp_path / "blank.png")])
    keys = list(register_pending(home, instance).dynamic_partitions_requests[0].partition_keys)
    run_range(instance, keys)

    result = dg.materialize([mesh_quality_report], instance=instance, resources={"orfeas_home": OrfeasHomeResource()})

    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert (metadata["images"].value, metadata["delivered"].value, metadata["failed"].value) == (3, 2, 1)
    rows = {row.data["image"]: row.data for row in metadata["table"].value.records}
    assert rows[keys[2]]["state"] == "failed" and "no foreground" in rows[keys[2]]["reasons"]
    assert rows[keys[0]]["state"] == "delivered" and int(rows[keys[0]]["faces"]) > 0 and rows[keys[0]]["backend"] == "inflate"
    assert metadata["contact_sheet"].value.startswith("![latest previews](data:image/png;base64,")
    assert len(metadata["contact_sheet"].value) < 30_000
    sheet = np.asarray(Image.open(home.root / "reports" / "contact_sheet.png"))
    assert sheet.shape[1] == 2 * 128, "two previews side by side"


def test_the_report_refreshes_itself_after_runs_deliver():
    from orfeas_pipelines.definitions import defs

    sensor = next(sensor for sensor in defs.sensors if sensor.name == "report_refresh_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_assets_def("mesh_quality_report").automation_conditions_by_key

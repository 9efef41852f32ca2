"""`mesh_quality_report`: every image's outcome in one table and one picture, refreshed after runs.

Read from Dagster itself (the latest materialization of each `mesh` partition and the latest
failed `mesh_is_valid` checks), so it shows exactly what the partitions page shows, across
all runs, with a contact sheet of the latest previews written to `reports/` in the home.
"""

import io
from pathlib import Path

import dagster as dg

from orfeas_pipelines.assets.meshes import MESH, VALID_CHECK
from orfeas_pipelines.partitions import file_of, job_id_of
from orfeas_pipelines.resources.home import OrfeasHomeResource

REPORT_IMAGES = 5000
"""The most recent images the report covers."""
SHEET_PREVIEWS = 24
COLUMNS = ("image", "state", "verdict", "reasons", "faces", "watertight", "foreground_fraction", "seconds", "backend")


@dg.asset(
    deps=[MESH],
    group_name="meshes",
    kinds={"pandas"},
    automation_condition=dg.AutomationCondition.any_deps_updated() & ~dg.AutomationCondition.in_progress(),
)
def mesh_quality_report(context: dg.AssetExecutionContext, orfeas_home: OrfeasHomeResource) -> dg.MaterializeResult:
    """Verdicts, faces, watertightness, foreground fraction, seconds and backend of every recent
    image, delivered or failed, with a contact sheet of the latest previews."""
    import pandas as pd

    delivered = _delivered_rows(context.instance)
    failed = [row for row in _failed_rows(context.instance) if row["image"] not in {r["image"] for r in delivered}]
    frame = pd.DataFrame(delivered + failed, columns=list(COLUMNS), dtype=object)
    metadata = {
        "images": len(frame),
        "delivered": len(delivered),
        "suspect": int((frame["verdict"] == "suspect").sum()),
        "failed": len(failed),
        "table": dg.MetadataValue.table(
            records=[dg.TableRecord({k: _plain(v) for k, v in row.items()}) for row in frame.to_dict("records")],
            schema=dg.TableSchema(columns=[dg.TableColumn(name, "string") for name in COLUMNS]),
        ),
    }
    sheet = _contact_sheet(orfeas_home, delivered[:SHEET_PREVIEWS])
    if sheet is not None:
        metadata["contact_sheet"] = dg.MetadataValue.md(f"![latest previews]({sheet})")
        metadata["contact_sheet_file"] = dg.MetadataValue.path(str(orfeas_home.home.root / "reports" / "contact_sheet.png"))
    return dg.MaterializeResult(metadata=metadata)


def _delivered_rows(instance: dg.DagsterInstance) -> list[dict]:
    """One row per partition from its latest materialization, newest first."""
    rows, seen = [], set()
    for record in instance.fetch_materializations(MESH, limit=REPORT_IMAGES).records:
        key = record.partition_key
        if key in seen:
            continue
        seen.add(key)
        metadata = {name: value.value for name, value in record.asset_materialization.metadata.items()}
        quality = metadata.get("quality") or {}
        rows.append({
            "image": key,
            "state": "delivered",
            "verdict": quality.get("verdict", "ok"),
            "reasons": "; ".join(quality.get("reasons", [])),
            "faces": metadata.get("faces"),
            "watertight": metadata.get("watertight"),
            "foreground_fraction": metadata.get("foreground_fraction"),
            "seconds": metadata.get("seconds"),
            "backend": metadata.get("backend"),
            "folder": metadata.get("folder"),
        })
    return rows


def _failed_rows(instance: dg.DagsterInstance) -> list[dict]:
    """Images whose latest validity check failed with an error, newest first."""
    check = dg.AssetCheckKey(MESH, VALID_CHECK)
    rows, seen = [], set()
    for execution in instance.event_log_storage.get_asset_check_execution_history(check, limit=REPORT_IMAGES):
        evaluation = execution.evaluation
        if evaluation is None or evaluation.partition in seen:
            continue
        seen.add(evaluation.partition)
        if evaluation.passed or evaluation.severity == dg.AssetCheckSeverity.WARN:
            continue
        error = evaluation.metadata.get("error")
        rows.append({"image": evaluation.partition, "state": "failed", "verdict": "failed",
                     "reasons": error.value if error else ""})
    return rows


def _contact_sheet(orfeas_home: OrfeasHomeResource, rows: list[dict]) -> str | None:
    """The latest previews on one sheet: written to `reports/contact_sheet.png`, returned inline."""
    import numpy as np
    from PIL import Image

    from orfeas_pipelines.lib.home import write_bytes_atomic
    from orfeas_pipelines.lib.preview import contact_sheet_png, thumbnail_data_uri

    previews = []
    for row in rows:
        path = orfeas_home.home.outbox / job_id_of(row["image"]) / f"{Path(file_of(row['image'])).stem}.png"
        if path.is_file():
            previews.append(path.read_bytes())
    if not previews:
        return None
    sheet = contact_sheet_png(previews, columns=6)
    write_bytes_atomic(orfeas_home.home.root / "reports" / "contact_sheet.png", sheet)
    return thumbnail_data_uri(np.asarray(Image.open(io.BytesIO(sheet)).convert("RGBA")), max_side=768)


def _plain(value) -> str:
    return "" if value is None or value != value else str(value)

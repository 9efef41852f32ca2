"""The code location: assets, checks, the job, sensors, the drain and retire schedules, resources.

Loading this module must stay as cheap as `import dagster`: torch, the generators and
the model load inside the resource when a run starts.
"""

import dagster as dg

from orfeas_pipelines.assets.meshes import mesh, source_image
from orfeas_pipelines.assets.report import mesh_quality_report
from orfeas_pipelines.jobs import mesh_job
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.resources.inference import MeshGeneratorResource
from orfeas_pipelines.schedules.nightly import nightly_drain
from orfeas_pipelines.schedules.retire import retire_settled_partitions
from orfeas_pipelines.sensors.intake import IntakeSettings, inbox_sensor
from orfeas_pipelines.sensors.status import job_status_sensor

defs = dg.Definitions(
    assets=[source_image, mesh, mesh_quality_report],
    jobs=[mesh_job],
    sensors=[
        inbox_sensor,
        job_status_sensor,
        dg.AutomationConditionSensorDefinition(
            "report_refresh_sensor",
            target=[mesh_quality_report],
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=60,
            description="Refreshes mesh_quality_report after runs deliver meshes.",
        ),
    ],
    schedules=[nightly_drain, retire_settled_partitions],
    # A run is one step: one process per run, and the model loads once per run.
    executor=dg.in_process_executor,
    resources={
        "orfeas_home": OrfeasHomeResource(),
        "mesh_generator": MeshGeneratorResource(
            backend=dg.EnvVar("ORFEAS_BACKEND").get_value("inflate") or "inflate",
            device=dg.EnvVar("ORFEAS_DEVICE").get_value("auto") or "auto",
        ),
        "intake_settings": IntakeSettings(),
    },
)

"""The code location: assets, checks, jobs, sensors, schedule and resources.

Loading this module must stay as cheap as `import dagster`: torch, the generators and
the model load inside the resource when a run starts.
"""

import dagster as dg

from orfeas_pipelines.assets.meshes import generated_mesh, mesh_files, source_image
from orfeas_pipelines.jobs import mesh_job
from orfeas_pipelines.resources.home import OrfeasHomeResource
from orfeas_pipelines.resources.inference import MeshGeneratorResource
from orfeas_pipelines.schedules.nightly import nightly_drain_and_verify
from orfeas_pipelines.sensors.intake import IntakeSettings, inbox_sensor
from orfeas_pipelines.sensors.outbox import mesh_run_canceled, mesh_run_failed, mesh_run_succeeded

defs = dg.Definitions(
    assets=[source_image, generated_mesh, mesh_files],
    jobs=[mesh_job],
    sensors=[inbox_sensor, mesh_run_failed, mesh_run_succeeded, mesh_run_canceled],
    schedules=[nightly_drain_and_verify],
    # The three steps of a run are strictly sequential: one process per run, not per step,
    # saves two interpreter starts (and two model loads) per run.
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

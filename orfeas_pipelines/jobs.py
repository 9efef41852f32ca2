"""The main job: images to delivered meshes over a range of image partitions."""

import dagster as dg

from orfeas_pipelines.assets.meshes import generated_mesh, mesh_files, source_image
from orfeas_pipelines.partitions import images_partitions

mesh_job = dg.define_asset_job(
    "mesh_job",
    selection=dg.AssetSelection.assets(source_image, generated_mesh, mesh_files),
    partitions_def=images_partitions,
    description="Turns a range of image partitions into meshes in one batched run.",
)

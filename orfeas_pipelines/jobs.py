"""The main job: images to delivered meshes over a range of image partitions."""

import dagster as dg

from orfeas_pipelines.partitions import images_partitions

mesh_job = dg.define_asset_job(
    "mesh_job",
    selection=dg.AssetSelection.keys("mesh"),
    partitions_def=images_partitions,
    description="Turns a range of image partitions into delivered meshes in one batched run.",
)

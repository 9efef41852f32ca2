"""One dynamic partition per input image, keyed `<job_id>/<file>`, and the tags of range runs."""

import dagster as dg

from orfeas_pipelines.lib.delivery import file_of, job_id_of

images_partitions = dg.DynamicPartitionsDefinition(name="images")
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def range_tags(keys: list[str]) -> dict[str, str]:
    """The tags that make a run cover the contiguous stretch of partitions from keys[0] to keys[-1]."""
    return {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}


__all__ = ["file_of", "images_partitions", "job_id_of", "range_tags"]

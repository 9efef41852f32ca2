"""One dynamic partition per input image, keyed `<job_id>/<file>`."""

import dagster as dg

images_partitions = dg.DynamicPartitionsDefinition(name="images")


def job_id_of(partition_key: str) -> str:
    return partition_key.split("/", 1)[0]


def file_of(partition_key: str) -> str:
    return partition_key.split("/", 1)[1]

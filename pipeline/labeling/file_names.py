"""The names of the Parquet files a labeling job writes, so that it knows its own files from
anyone else's. A module of its own, without PyTorch: Ray Data's write tasks unpickle this class,
and importing it should not cost them a PyTorch import (seconds of CPU per worker process)."""

from __future__ import annotations

from ray.data.datasource import FilenameProvider

from ..results import result_file_name


class ResultFileNames(FilenameProvider):
    """Ray Data's file names for the job's Parquet files (see `pipeline.results.result_file_name`)."""

    def __init__(self) -> None:
        super().__init__(file_format="parquet")

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return result_file_name(write_uuid, task_index)

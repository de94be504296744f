"""The labeling job's output: one Parquet row per input image, always.

The pyarrow schema is derived from `LabelRow` (see schemas/arrow.py) and carries
`schema_version` in its metadata; readers check it before trusting column meanings.
"""

from __future__ import annotations

from typing import Annotated

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from .arrow import ArrowType, arrow_schema

SCHEMA_VERSION = "1"

Int32 = Annotated[int, ArrowType(pa.int32())]
Float32 = Annotated[float, ArrowType(pa.float32())]


class Segment(BaseModel):
    """All pixels of one class in one image."""

    model_config = ConfigDict(extra="forbid")

    class_id: Int32 = Field(description="the taxonomy id, the value of these pixels in the label map")
    class_name: str
    score: Float32 = Field(
        description="mean over its pixels of the SAN class score (sum over queries of class x mask probability)"
    )
    area: int = Field(description="pixel count")
    bbox: list[Int32] = Field(description="[x, y, width, height] in pixels, COCO convention")
    rle_counts: str = Field(description="COCO compressed RLE (pycocotools) of the class's pixels")
    rle_size: list[Int32] = Field(description="[height, width] of the RLE")


class LabelRow(BaseModel):
    """One input image's labels (or the reason it has none)."""

    model_config = ConfigDict(extra="forbid")

    image_uri: str
    width: Int32 | None = Field(description="original width in pixels (after EXIF rotation)")
    height: Int32 | None = Field(description="original height in pixels (after EXIF rotation)")
    label_map_png: bytes | None = Field(description="16-bit PNG of class ids at the original size; 0 = unlabeled")
    segments: list[Segment]
    model_id: str
    checkpoint_digest: str | None = Field(description="sha256 of the checkpoint file; null for random weights")
    taxonomy_digest: str
    error: str | None = Field(description="null, or why this image has no labels")


def label_row_schema() -> pa.Schema:
    return arrow_schema(LabelRow, metadata={"schema_version": SCHEMA_VERSION})

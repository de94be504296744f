"""The labeling job's output: one Parquet row per input image, always.

The pyarrow schema is derived from `LabelRow` (see schemas/arrow.py) and carries
`schema_version` in its metadata; readers check it before trusting column meanings.

A video gets one row per sampled frame, in the same schema: `image_uri` names the frame
(`VIDEO#frame=N`), `video_uri` the video, and the other video fields say where the frame is.
`source_uri` (the video for a frame, else the image) is what a run is incremental over.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from .arrow import ArrowType, arrow_schema

# 2: error_kind; each file's metadata names the run that wrote it (RUN_ID_KEY)
# 3: video frames (video_uri, frame_index, timestamp_s, clip_index, frame_count)
# 4: confidence (mean_score, mean_margin, uncertain_fraction, uncertainty_png, segments' margin)
# 5: confidence in [0, 1] (mean_confidence, segments' confidence: the class posterior); SAN's own
#    score, a sum over proposals, renamed raw_score / mean_raw_score
SCHEMA_VERSION = "5"

# A pixel whose top-two margin ((s1 - s2) / s1) is under this is uncertain: the two likeliest
# classes are within 10% of each other.
UNCERTAIN_MARGIN = 0.1

Int32 = Annotated[int, ArrowType(pa.int32())]
Float32 = Annotated[float, ArrowType(pa.float32())]


class Segment(BaseModel):
    """All pixels of one class in one image."""

    model_config = ConfigDict(extra="forbid")

    class_id: Int32 = Field(description="the taxonomy id, the value of these pixels in the label map")
    class_name: str
    confidence: Float32 | None = Field(
        default=None,
        description="mean over its pixels of the class's posterior, 0 to 1: its score divided by the sum of "
        "every class's score at the pixel (the scores of all classes at a pixel sum to 1)",
    )
    raw_score: Float32 = Field(
        description="mean over its pixels of SAN's own class score, a sum over the mask proposals of class x "
        "mask probability: not bounded by 1; for comparisons with the published code"
    )
    area: int = Field(description="pixel count")
    bbox: list[Int32] = Field(description="[x, y, width, height] in pixels, COCO convention")
    rle_counts: str = Field(description="COCO compressed RLE (pycocotools) of the class's pixels")
    rle_size: list[Int32] = Field(description="[height, width] of the RLE")
    margin: Float32 | None = Field(
        default=None,
        description="mean over its pixels of the top-two margin relative to the top score, (s1 - s2) / s1: "
        "0 a tie, 1 no rival",
    )


class LabelRow(BaseModel):
    """One input image's labels, or one sampled video frame's (or the reason it has none)."""

    model_config = ConfigDict(extra="forbid")

    image_uri: str = Field(description="the image; for a video frame `VIDEO#frame=N` (N = frame_index)")
    width: Int32 | None = Field(description="original width in pixels (after EXIF rotation)")
    height: Int32 | None = Field(description="original height in pixels (after EXIF rotation)")
    label_map_png: bytes | None = Field(description="16-bit PNG of class ids at the original size; 0 = unlabeled")
    segments: list[Segment]
    model_id: str
    checkpoint_digest: str | None = Field(description="sha256 of the checkpoint file; null for random weights")
    taxonomy_digest: str
    error: str | None = Field(description="null, or why this image has no labels")
    error_kind: Literal["transient", "permanent"] | None = Field(
        default=None,
        description="null, or whether the error may pass if tried again (I/O: timeouts, throttling, 5xx, "
        "connections) or not (a bad image, a missing file): `--retry-errors` re-attempts by kind",
    )
    mean_confidence: Float32 | None = Field(
        default=None, description="the pixels' mean posterior of their winning class, 0 to 1 (see Segment.confidence)"
    )
    mean_raw_score: Float32 | None = Field(
        default=None, description="the pixels' mean SAN score of their winning class (see Segment.raw_score)"
    )
    mean_margin: Float32 | None = Field(
        default=None, description="the pixels' mean top-two margin, (s1 - s2) / s1; low = unsure"
    )
    uncertain_fraction: Float32 | None = Field(
        default=None,
        description=f"share of the pixels whose top-two margin is under {UNCERTAIN_MARGIN}: review the rows "
        "with most first",
    )
    uncertainty_png: bytes | None = Field(
        default=None,
        description="with --uncertainty-map: 8-bit PNG of each pixel's margin at the label map's size, "
        "round(255 * margin)",
    )
    video_uri: str | None = Field(
        default=None, description="the video this row is a frame of (or an error of); null for an image"
    )
    frame_index: Int32 | None = Field(
        default=None, description="the frame's place in the video, counting every decoded frame from 0"
    )
    timestamp_s: float | None = Field(default=None, description="the frame's presentation time in seconds")
    clip_index: Int32 | None = Field(
        default=None, description="the clip (consecutive sampled frames sharing proposals) it was labeled in, from 0"
    )
    frame_count: Int32 | None = Field(
        default=None, description="frames in the whole video as its container declares them; null if undeclared"
    )


def frame_uri(video_uri: str, frame_index: int) -> str:
    """The `image_uri` of a video frame's row."""
    return f"{video_uri}#frame={frame_index}"


PROVENANCE_KEY = "san_labeler.provenance"
# The run that wrote a file (runs are named by start time, so they sort): when two files hold a
# row for one image, the later run's row is the one that counts.
RUN_ID_KEY = "san_labeler.run_id"


class TaxonomyRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    digest: str


class Provenance(BaseModel):
    """What made a labeling output: in the run manifest and in every Parquet file's metadata, so
    that a file copied elsewhere still says. Runs into one output must agree on `LABEL_FIELDS`."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    schema_version: str = SCHEMA_VERSION
    project_version: str
    model_id: str
    weights_digest: str | None = Field(description="sha256 of the checkpoint; null for random smoke weights")
    model_config_digest: str = Field(description="sha256 of the model config JSON")
    taxonomy: TaxonomyRef
    short_side: int
    max_long_side: int
    precision: str = Field(default="fp32", description="fp32, bf16 or auto as asked (files before it: fp32)")
    video_sampling: str = Field(
        default="",
        description="which video frames are labeled and clustered together, e.g. `fps=2,clip=8` or `stride=15,clip=8`",
    )

    # What changes the labels of an image; the project version and schema do not.
    LABEL_FIELDS: ClassVar[tuple[str, ...]] = (
        "weights_digest",
        "model_config_digest",
        "taxonomy",
        "short_side",
        "max_long_side",
        "precision",
        "video_sampling",
    )

    def differences(self, other: Provenance) -> list[str]:
        """`field: here -> there` for every label-changing field in which `other` differs."""
        found = []
        for name in self.LABEL_FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                show = (lambda v: f"{v.name} v{v.version} ({v.digest[:12]})") if name == "taxonomy" else str
                found.append(f"{name}: {show(theirs)} in the output, {show(mine)} now")
        return found

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> Provenance | None:
        """The provenance a Parquet file's schema metadata carries (None if it carries none)."""
        raw = (schema.metadata or {}).get(PROVENANCE_KEY.encode())
        return cls.model_validate_json(raw) if raw else None


def label_row_schema(provenance: Provenance | None = None, run_id: str | None = None) -> pa.Schema:
    metadata = {"schema_version": SCHEMA_VERSION}
    if provenance is not None:
        metadata[PROVENANCE_KEY] = provenance.model_dump_json()
    if run_id is not None:
        metadata[RUN_ID_KEY] = run_id
    return arrow_schema(LabelRow, metadata=metadata)


class LeaseRecord(BaseModel):
    """`_lease/<generation>.json` in a labels folder: the run that holds the folder, so that two
    runs never label into it at once. The holder renews `expires_at` while it runs; a run that
    finds a live lease held by another run exits 75 (see `pipeline.store.lease`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    generation: int = Field(ge=1, description="one more than the lease it followed; a higher one wins")
    run_id: str
    host: str
    pid: int
    process_started: float = Field(description="the holder's process start time (seconds since the epoch)")
    acquired_at: datetime
    expires_at: datetime = Field(description="UTC; past it, another run may take the folder over")
    released: bool = Field(default=False, description="the holder finished (or failed) and let go")

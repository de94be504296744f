"""schemas/: pyarrow schemas derived from the pydantic records, and the job configs."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, ValidationError

from schemas.arrow import ArrowType, arrow_schema
from schemas.jobs import FinetuneConfig, LabelJobConfig, ModelChoice
from schemas.output import SCHEMA_VERSION, LabelRow, Segment, label_row_schema


def _row(**overrides) -> LabelRow:
    values = dict(
        image_uri="s3://bucket/images/0001.jpg",
        width=640,
        height=480,
        label_map_png=b"\x89PNG...",
        segments=[
            Segment(
                class_id=2,
                class_name="person",
                confidence=0.75,
                raw_score=1.25,  # SAN scores may pass 1; exact in float32
                area=1200,
                bbox=[10, 20, 30, 40],
                rle_counts="abc",
                rle_size=[480, 640],
            )
        ],
        model_id="san-vit-b16",
        checkpoint_digest="0" * 64,
        taxonomy_digest="1" * 64,
        error=None,
    )
    values.update(overrides)
    return LabelRow(**values)


def test_output_schema_is_derived_from_the_row_model():
    schema = label_row_schema()
    assert schema.names == list(LabelRow.model_fields)
    assert schema.metadata[b"schema_version"] == SCHEMA_VERSION.encode()
    assert schema.field("width").type == pa.int32() and schema.field("width").nullable
    assert not schema.field("image_uri").nullable
    segment = schema.field("segments").type.value_type
    assert [f.name for f in segment] == list(Segment.model_fields)
    assert segment.field("raw_score").type == pa.float32() and segment.field("confidence").type == pa.float32()
    assert segment.field("bbox").type == pa.list_(pa.field("item", pa.int32(), nullable=False))


def test_rows_round_trip_through_parquet():
    rows = [
        _row(),
        _row(
            image_uri="broken.jpg",
            width=None,
            height=None,
            label_map_png=None,
            segments=[],
            error="cannot decode image: truncated JPEG",
        ),
    ]
    table = pa.Table.from_pylist([r.model_dump() for r in rows], schema=label_row_schema())
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    back = pq.read_table(io.BytesIO(buffer.getvalue()))
    assert back.schema.metadata[b"schema_version"] == SCHEMA_VERSION.encode()
    assert [LabelRow.model_validate(r) for r in back.to_pylist()] == rows


def test_arrow_derivation_rejects_what_it_cannot_express():
    class Ambiguous(BaseModel):
        value: int | str

    with pytest.raises(TypeError, match="only X | None"):
        arrow_schema(Ambiguous)

    class Narrow(BaseModel):
        small: Annotated[int, ArrowType(pa.int8())]
        many: list[float]

    schema = arrow_schema(Narrow)
    assert schema.field("small").type == pa.int8() and schema.field("many").type.value_type == pa.float64()


def test_job_configs_validate():
    weights = ModelChoice(model="san-vit-b16")
    config = LabelJobConfig(vocab="ade150", input="s3://in/", output="s3://out/", weights=weights, concurrency=(2, 4))
    assert config.short_side == 640 and config.batch_size is None  # follows the cluster: actor_layout
    with pytest.raises(ValidationError, match="need 1 <= MIN <= MAX"):
        LabelJobConfig(vocab="v", input="i", output="o", weights=weights, concurrency=(4, 2))
    assert ModelChoice().model == "san-vit-b16"  # the default preset
    with pytest.raises(ValidationError, match="--model NAME or --checkpoint URI, not both"):
        ModelChoice(model="san-vit-b16", checkpoint="c.pth")
    with pytest.raises(ValidationError, match="only applies to --checkpoint"):
        ModelChoice(model="san-vit-b16", model_config_uri="cfg.json")
    with pytest.raises(ValidationError, match="batch_sise"):
        LabelJobConfig(vocab="v", input="i", output="o", weights=weights, batch_sise=3)
    preset = ModelChoice(model="san-vit-b16")
    finetune = FinetuneConfig(vocab="v.yaml", train="train.parquet", init=preset, output="/tmp/ft", max_steps=10)
    assert (finetune.lr, finetune.weight_decay, finetune.grad_clip) == (1e-4, 1e-4, 0.01)
    assert finetune.init.model == "san-vit-b16" and finetune.per_worker_batch_size == 4
    local = ModelChoice(checkpoint="ckpt/model.pth", model_config_uri="cfg.json")  # local paths made absolute
    assert (local.model, local.checkpoint, local.model_config_uri) == (
        None,
        str(Path("ckpt/model.pth").resolve()),
        str(Path("cfg.json").resolve()),
    )
    assert ModelChoice(checkpoint="s3://b/model.safetensors").checkpoint == "s3://b/model.safetensors"
    with pytest.raises(ValidationError, match="--max-steps or --epochs"):
        FinetuneConfig(vocab="v.yaml", train="t", init=preset, output="s")
    with pytest.raises(ValidationError, match="multiple of --workers 3"):
        FinetuneConfig(vocab="v", train="t", init=preset, output="s", max_steps=1, workers=3)
    with pytest.raises(ValidationError, match="--eval-every needs --val"):
        FinetuneConfig(vocab="v", train="t", init=preset, output="s", max_steps=1, eval_every=5)


def test_credentials_never_reach_a_record():
    options = {
        "key": "AKIAEXAMPLE",
        "secret": "s3cr3t-value",
        "anon": False,
        "client_kwargs": {"region_name": "eu-west-1", "aws_session_token": "tok-123"},
    }
    config = LabelJobConfig(
        vocab="ade150", input="s3://user:hunter2@bucket/in/", output="s3://b/out/", storage_options=options
    )
    record = json.dumps(config.for_record())
    for secret in ("AKIAEXAMPLE", "s3cr3t-value", "tok-123", "hunter2"):
        assert secret not in record
    assert '"region_name": "eu-west-1"' in record and '"anon": false' in record
    assert config.storage_options["secret"] == "s3cr3t-value"  # the job itself still has them


def test_a_record_shows_storage_options_by_allow_list_and_uris_without_signatures():
    options = {
        "connection_string": "DefaultEndpointsProtocol=https;AccountKey=azure-marker",
        "sas_token": "sv=2024&sig=sas-marker",
        "token": "gcs-marker",
        "credentials": {"client_email": "x", "private_key": "pem-marker"},
        "anon": False,
        "client_kwargs": {"endpoint_url": "https://minio:9000", "api_secret": "nested-marker"},
        "account_name": "photos",
    }
    presigned = "https://bucket.s3.amazonaws.com/in/list.txt?X-Amz-Signature=presigned-marker&X-Amz-Credential=a"
    config = LabelJobConfig(vocab="ade150", input=presigned, output="s3://b/out/", storage_options=options)
    record = json.dumps(config.for_record())
    assert "marker" not in record
    shown = config.for_record()
    assert shown["input"] == "https://bucket.s3.amazonaws.com/in/list.txt?<redacted>"
    assert shown["storage_options"] == {
        "connection_string": "<redacted>", "sas_token": "<redacted>", "token": "<redacted>",
        "credentials": "<redacted>", "anon": False,
        "client_kwargs": {"endpoint_url": "https://minio:9000", "api_secret": "<redacted>"},
        "account_name": "photos",
    }  # fmt: skip

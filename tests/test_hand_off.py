"""The labeling actor's hand-off: the device's half of the job path (`label_maps`) returns raw
arrays, the actor's table carries them (`device_table`), and the CPU tasks after it
(`encode_rows`) make exactly the rows the whole job path makes in one process. And the label-map
PNG codec that those tasks use."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pipeline.labeling.encode import (
    DEVICE_SCHEMA,
    arrays_of,
    binary_column,
    device_table,
    encode_labeled,
    encode_rows,
)
from pipeline.labeling.inference import label_images, label_maps
from pipeline.masks.label_maps import decode_label_map, encode_label_png, encode_png
from san_core.build import load_model
from schemas.output import SCHEMA_VERSION, Provenance, TaxonomyRef


@pytest.fixture(scope="module")
def tiny(parity_dir):
    tiny_dir = parity_dir / "tiny_a"
    return load_model(checkpoint=str(tiny_dir / "checkpoint.pth"), model_config=str(tiny_dir / "config.json")).model


@pytest.fixture(scope="module")
def provenance() -> Provenance:
    return Provenance(
        project_version="test",
        model_id="tiny",
        weights_digest="ab" * 32,
        model_config_digest="cd" * 32,
        taxonomy=TaxonomyRef(name="t", version="1", digest="ef" * 32),
        short_side=640,
        max_long_side=2560,
    )


@pytest.mark.parametrize(
    "label_map",
    [
        np.random.default_rng(0).integers(0, 65536, (37, 53)).astype(np.uint16),  # every bit of 16
        np.full((1, 1), 65535, dtype=np.uint16),
        np.arange(90, dtype=np.uint16)[None],  # one row
        np.arange(90, dtype=np.uint16)[:, None],  # one column
        np.repeat(np.arange(6, dtype=np.int64), 200).reshape(30, 40),  # int64 ids, long runs
        # deflated a block of rows at a time: rows on both sides of a block's edge
        np.random.default_rng(2).integers(0, 4, (2100, 1500)).astype(np.uint16).cumsum(axis=0, dtype=np.uint16),
    ],
)
def test_label_map_pngs_decode_to_the_map(label_map):
    png = encode_label_png(label_map)
    with Image.open(io.BytesIO(png)) as image:
        image.verify()  # chunk lengths and CRCs
    assert np.array_equal(decode_label_map(png), label_map) and decode_label_map(png).dtype == np.uint16


def test_an_8_bit_png_and_what_no_png_holds():
    margin = np.random.default_rng(1).integers(0, 256, (19, 23)).astype(np.uint8)
    with Image.open(io.BytesIO(encode_png(margin))) as image:
        assert image.mode == "L" and np.array_equal(np.asarray(image), margin)
    for bad in (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.float32), np.zeros((0, 4), np.uint16)):
        with pytest.raises(ValueError, match="greyscale PNG"):
            encode_png(bad)
    with pytest.raises(ValueError, match="0..65535"):
        encode_label_png(np.array([[1, -1]]))
    with pytest.raises(ValueError, match="0..65535"):
        encode_label_png(np.array([[70000]]))


def test_binary_columns_keep_arrays_and_nulls():
    arrays = [np.arange(6, dtype=np.float64), None, np.zeros((0,), np.uint8), np.arange(4, dtype="<u2"), None]
    column = binary_column(arrays)
    assert column.type == pa.large_binary() and column.null_count == 2
    assert column.to_pylist() == [None if a is None else a.tobytes() for a in arrays]
    assert binary_column([None]).to_pylist() == [None] and binary_column([]).to_pylist() == []


def _images() -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    rng = np.random.default_rng(3)
    images = [(rng.random((45 + 7 * i, 61, 3)) * 255).astype(np.uint8) for i in range(3)]
    return images, [(90, 122), (413, 300), (52, 61)]


@pytest.mark.parametrize("first_id", [1, 40_000])  # ids over 32767 cross the device as int16 bits
def test_the_hand_off_makes_the_rows_of_the_whole_job_path(tiny, tiny_inputs, provenance, first_id):
    vocabulary = tiny_inputs["vocabulary"]
    embeddings = tiny.class_embeddings(vocabulary)
    class_ids = torch.arange(first_id, first_id + len(vocabulary))
    names = {first_id + i: name for i, name in enumerate(vocabulary)}
    images, sizes = _images()
    in_one_process = label_images(tiny, images, sizes, embeddings, class_ids, names, uncertainty_map=True)

    arrays = label_maps(tiny, images, sizes, embeddings, class_ids, uncertainty_map=True)
    assert all(a.label_map.dtype == np.uint16 and a.label_map.shape == s for a, s in zip(arrays, sizes, strict=True))
    # as an actor answers: image 1 failed to load, so the model saw images 0 and 2
    batch = {
        "image_uri": ["a.jpg", "broken.jpg", "c.jpg"],
        "height": [sizes[0][0], -1, sizes[2][0]],
        "width": [sizes[0][1], -1, sizes[2][1]],
    }
    errors = [None, "cannot load image: OSError: truncated", None]
    table = device_table(batch, errors, [None, "permanent", None], {0: arrays[0], 2: arrays[2]})
    assert table.schema == DEVICE_SCHEMA and table["label_map"].null_count == 1
    # what the actor sent is raw: 2 bytes a pixel, nothing encoded
    assert len(table["label_map"][0].as_py()) == 2 * sizes[0][0] * sizes[0][1]
    back = arrays_of(table)
    assert back[1] is None and np.array_equal(back[2].label_map, arrays[2].label_map)

    encoded = encode_rows(table, names, provenance, "run-1")
    # an actor on CPUs encodes its arrays itself, with no Arrow copy between: the same rows
    labeled = {0: arrays[0], 2: arrays[2]}
    assert encode_labeled(batch, errors, [None, "permanent", None], labeled, names, provenance, "run-1") == encoded
    rows = encoded.to_pylist()
    assert [r["image_uri"] for r in rows] == batch["image_uri"]
    for row, expected in zip([rows[0], rows[2]], [in_one_process[0], in_one_process[2]], strict=True):
        assert row["label_map_png"] == expected.label_map_png and row["uncertainty_png"] == expected.uncertainty_png
        assert [s["class_id"] for s in row["segments"]] == [s.class_id for s in expected.segments]
        for stored, segment in zip(row["segments"], expected.segments, strict=True):
            exact = ("class_id", "class_name", "area", "bbox", "rle_counts", "rle_size")
            assert {k: stored[k] for k in exact} == segment.model_dump(include=set(exact))
            assert stored["raw_score"] == pytest.approx(segment.raw_score, rel=1e-6)  # stored as float32
            assert stored["confidence"] == pytest.approx(segment.confidence, rel=1e-6)
            assert stored["margin"] == pytest.approx(segment.margin, rel=1e-6)
        assert row["mean_confidence"] == pytest.approx(expected.mean_confidence, rel=1e-6)
        assert row["mean_raw_score"] == pytest.approx(expected.mean_raw_score, rel=1e-6)
        assert row["mean_margin"] == pytest.approx(expected.mean_margin, rel=1e-6)
        assert row["uncertain_fraction"] == pytest.approx(expected.uncertain_fraction, rel=1e-6)
        assert row["model_id"] == "tiny" and row["taxonomy_digest"] == "ef" * 32 and row["error"] is None
    label_map = decode_label_map(rows[0]["label_map_png"])
    assert label_map.min() >= first_id and label_map.max() < first_id + len(vocabulary)
    assert rows[1]["error"] == errors[1] and rows[1]["error_kind"] == "permanent"
    assert rows[1]["label_map_png"] is None and rows[1]["segments"] == [] and rows[1]["width"] is None


def test_an_image_whose_arrays_cannot_be_encoded_gets_an_error_row(tiny, tiny_inputs, provenance):
    vocabulary = tiny_inputs["vocabulary"]
    embeddings = tiny.class_embeddings(vocabulary)
    class_ids = torch.arange(1, len(vocabulary) + 1)
    names = {i + 1: name for i, name in enumerate(vocabulary)}
    images, sizes = _images()
    arrays = label_maps(tiny, images[:2], sizes[:2], embeddings, class_ids)
    batch = {"image_uri": ["a.jpg", "b.jpg"], "height": [h for h, _ in sizes[:2]], "width": [w for _, w in sizes[:2]]}
    table = device_table(batch, [None, None], [None, None], dict(enumerate(arrays)))
    maps = table["label_map"].to_pylist()
    maps[1] = maps[1][:-2]  # one pixel short: not a map of that size
    table = table.set_column(table.schema.get_field_index("label_map"), "label_map", pa.array(maps, pa.large_binary()))
    with pytest.raises(ValueError):
        arrays_of(table)  # read together, the damaged row stops the reading...
    rows = encode_rows(table, names, provenance, "run-1")  # ...the encoding task loses no row
    assert rows.schema.metadata[b"schema_version"] == SCHEMA_VERSION.encode()
    good, broken = rows.to_pylist()
    assert good["error"] is None and good["label_map_png"] is not None
    assert broken["error"].startswith("encoding labels failed") and broken["error_kind"] == "permanent"
    assert broken["label_map_png"] is None and broken["image_uri"] == "b.jpg" and broken["segments"] == []


def test_label_maps_made_a_batch_at_a_time_are_those_made_image_by_image(tiny, tiny_inputs):
    """What a GPU runs (batches of one size through `batched_label_maps`) against the CPU's tiles."""
    vocabulary = tiny_inputs["vocabulary"]
    embeddings = tiny.class_embeddings(vocabulary)
    class_ids = torch.arange(40_000, 40_000 + len(vocabulary))
    rng = np.random.default_rng(5)
    images = [(rng.random((45, 61, 3)) * 255).astype(np.uint8) for _ in range(3)] + [_images()[0][1]]
    sizes = [(90, 122), (90, 122), (45, 61), (413, 300)]  # two alike, two of their own
    by_tiles = label_maps(tiny, images, sizes, embeddings, class_ids, uncertainty_map=True)
    batched = label_maps(tiny, images, sizes, embeddings, class_ids, uncertainty_map=True, batched=True)
    for one, other in zip(by_tiles, batched, strict=True):
        assert np.array_equal(one.label_map, other.label_map)
        assert one.score_sums.shape == other.score_sums.shape
        assert np.allclose(one.score_sums, other.score_sums, rtol=1e-6)
        assert np.allclose(one.margin_sums, other.margin_sums, rtol=1e-6)
        assert np.allclose(one.confidence_sums, other.confidence_sums, rtol=1e-6)
        assert abs(one.uncertain_pixels - other.uncertain_pixels) <= 2  # margins at the threshold, float rounding
        assert np.abs(one.margin_map.astype(int) - other.margin_map).max() <= 1

"""jobs/label.py end to end on a real local Ray, real files, real Parquet; and on S3 (moto)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from image_fixtures import write_image_set
from pycocotools.coco import COCO

from jobs.export import main as export_main
from jobs.label import main as label_main
from pipeline.inputs import InputError, list_inputs
from pipeline.masks.coco_rle import rle_to_mask
from pipeline.masks.label_maps import decode_label_map
from pipeline.media.images import decode_for_model, decode_rgb
from pipeline.vocabulary import load_or_build_vocabulary
from san_core.build import load_model
from schemas.output import SCHEMA_VERSION, LabelRow
from schemas.taxonomy import load_taxonomy

pytestmark = pytest.mark.usefixtures("ray_session")

TAXONOMY = """\
name: test-street
version: 1
templates: vild
classes:
  - {id: 3, name: person, prompts: [person, human]}
  - {id: 7, name: cat}
  - {id: 9, name: sky}
  - {id: 12, name: cup}
"""


def _rows(output: str) -> list[dict]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(output)
    rows = []
    for path in sorted(fs.find(root)):
        if path.endswith(".parquet") and "/_" not in path[len(root) :]:
            with fs.open(path, "rb") as f:
                table = pq.read_table(f)
            assert table.schema.metadata[b"schema_version"] == SCHEMA_VERSION.encode()
            rows.extend(table.to_pylist())
    return rows


@pytest.fixture(scope="module")
def local_run(ray_session, tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("label")
    expected = write_image_set(root / "images" / "nested")  # found recursively
    (root / "images" / "notes.txt").write_text("not an image extension: ignored")
    vocab = root / "taxonomy.yaml"
    vocab.write_text(TAXONOMY)
    output = root / "out"
    args = [
        "--vocab",
        str(vocab),
        "--input",
        str(root / "images"),
        "--output",
        str(output),
        "--preview",
        "2",
        "--vocab-cache",
        str(root / "vocab-cache"),
        "--rows-per-file",
        "4",
        "--max-error-ratio",
        "0.5",  # 4 of the 11 are broken on purpose
        *tiny_weights,
    ]
    rc = label_main(args)
    return {"rc": rc, "root": root, "expected": expected, "output": output, "vocab": vocab, "args": args}


def test_every_input_gets_exactly_one_row_and_bad_input_an_error(local_run):
    assert local_run["rc"] == 0
    rows = _rows(str(local_run["output"]))
    by_name = {Path(r["image_uri"]).name: r for r in rows}
    assert len(rows) == len(by_name) == len(local_run["expected"])
    for name, fragment in local_run["expected"].items():
        row = by_name[name]
        LabelRow.model_validate(row)
        if fragment is None:
            assert row["error"] is None and row["label_map_png"] and row["segments"], name
        else:
            assert row["error"] is not None and fragment in row["error"], (name, row["error"])
            assert row["label_map_png"] is None and row["segments"] == [] and row["width"] is None
    assert (by_name["rotated_exif.jpg"]["width"], by_name["rotated_exif.jpg"]["height"]) == (400, 600)
    assert (by_name["coffee.jpg"]["width"], by_name["coffee.jpg"]["height"]) == (600, 400)
    assert (by_name["sixteen_bit.png"]["width"], by_name["sixteen_bit.png"]["height"]) == (160, 120)


def test_rle_of_every_segment_decodes_to_exactly_its_label_map_pixels(local_run):
    taxonomy_ids = {3: "person", 7: "cat", 9: "sky", 12: "cup"}
    for row in _rows(str(local_run["output"])):
        if row["error"]:
            continue
        label_map = decode_label_map(row["label_map_png"])
        assert label_map.shape == (row["height"], row["width"])
        present = set(np.unique(label_map).tolist()) - {0}
        assert present == {s["class_id"] for s in row["segments"]}
        for segment in row["segments"]:
            assert taxonomy_ids[segment["class_id"]] == segment["class_name"]
            mask = rle_to_mask(segment["rle_counts"], segment["rle_size"])
            assert np.array_equal(mask, label_map == segment["class_id"])
            assert segment["area"] == int(mask.sum())
            ys, xs = np.nonzero(mask)
            assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert segment["raw_score"] > 0.0  # a sum over queries of class x mask probability
            assert 0.0 < segment["confidence"] <= 1.0  # a posterior over the vocabulary


def test_labels_equal_calling_san_core_directly(local_run, parity_dir):
    tiny = parity_dir / "tiny_a"
    model = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json")).model
    taxonomy = load_taxonomy(str(local_run["vocab"]))
    table = load_or_build_vocabulary(taxonomy, model, cache_dir=None)
    class_ids = torch.tensor([c.id for c in taxonomy.classes])
    rows = {Path(r["image_uri"]).name: r for r in _rows(str(local_run["output"]))}
    for name in ("astronaut.jpg", "rotated_exif.jpg"):
        resized, size = decode_for_model(Path(rows[name]["image_uri"]).read_bytes(), 640, 2560)
        assert size == (decode_rgb(Path(rows[name]["image_uri"]).read_bytes()).shape[:2])
        image = torch.from_numpy(resized).permute(2, 0, 1).float()
        ((indices, _),) = model.predict_labels([image], torch.from_numpy(table.embeddings), [size])
        direct = class_ids[indices].numpy().astype(np.uint16)
        assert np.array_equal(direct, decode_label_map(rows[name]["label_map_png"]))


def test_manifest_is_written_with_config_digests_and_counts(local_run):
    manifest = json.loads((local_run["output"] / "_manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 11, "labeled": 7, "failed": 4, "skipped": 0}
    assert manifest["weights"] == "checkpoint" and manifest["labels_meaningful"] is True
    assert len(manifest["digests"]["checkpoint"]) == 64 and len(manifest["digests"]["taxonomy"]) == 64
    assert manifest["config"]["rows_per_file"] == 4 and manifest["status"] == "ok"
    assert manifest["images_per_s"] > 0 and manifest["wall_time_s"] > 0
    # start-up (actors loading, first batch through) is reported apart from the steady state
    assert 0 < manifest["startup_s"] < manifest["stream_time_s"] and manifest["steady_images_per_s"] > 0
    peak = manifest["peak_memory_mib"]  # a model and its vocabulary: some hundreds of MiB in each
    assert 100 < peak["driver"] < 8192 and 100 < peak["labeling_actor"] < 8192
    parquet_files = list(local_run["output"].glob("*.parquet"))
    assert len(parquet_files) == 3  # 11 images, 4 per file
    assert all(p.stat().st_mtime <= (local_run["output"] / "_manifest.json").stat().st_mtime for p in parquet_files)


def test_previews_show_the_overlay(local_run):
    previews = sorted((local_run["output"] / "_previews").glob("*.png"))
    assert len(previews) == 2
    from PIL import Image

    with Image.open(previews[0]) as image:
        assert image.mode == "RGB" and image.width > 200


def test_export_to_coco_reads_back_with_pycocotools(local_run, tmp_path):
    target = tmp_path / "coco.json"
    image_root = local_run["root"] / "images"
    export = ["--input", str(local_run["output"]), "--vocab", str(local_run["vocab"]), "--output", str(target)]
    assert export_main([*export, "--image-root", str(image_root)]) == 0
    coco = COCO(str(target))
    assert sorted(coco.getCatIds()) == [3, 7, 9, 12]
    assert len(coco.getImgIds()) == 7  # error rows are left out
    rows = {r["image_uri"]: r for r in _rows(str(local_run["output"]))}
    for annotation in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(annotation["image_id"])[0]
        assert image["file_name"].startswith("nested/")  # relative, as annotation tools resolve it
        assert (image_root / image["file_name"]).is_file()
        label_map = decode_label_map(rows[str(image_root / image["file_name"])]["label_map_png"])
        assert np.array_equal(coco.annToMask(annotation).astype(bool), label_map == annotation["category_id"])


def test_rerun_labels_nothing_new_and_overwrite_starts_fresh(local_run):
    assert label_main(local_run["args"]) == 0
    manifest = json.loads((local_run["output"] / "_manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 11, "labeled": 0, "failed": 0, "skipped": 11}
    assert len(_rows(str(local_run["output"]))) == 11

    extra = local_run["root"] / "images" / "later.jpg"
    extra.write_bytes((local_run["root"] / "images" / "nested" / "chelsea.jpg").read_bytes())
    assert label_main(local_run["args"]) == 0  # incremental: only the new image
    manifest = json.loads((local_run["output"] / "_manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 12, "labeled": 1, "failed": 0, "skipped": 11}

    assert label_main([*local_run["args"], "--overwrite", "--max-error-ratio", "0.5"]) == 0
    manifest = json.loads((local_run["output"] / "_manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 12, "labeled": 8, "failed": 4, "skipped": 0}
    assert len(_rows(str(local_run["output"]))) == 12


def test_too_many_failures_exit_non_zero(tmp_path, tiny_weights, local_run, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"")
    (images / "b.jpg").write_text("not an image")
    (images / "c.jpg").write_bytes((local_run["root"] / "images" / "nested" / "coffee.jpg").read_bytes())
    rc = label_main(
        [
            "--vocab",
            "voc20",
            "--input",
            str(images),
            "--output",
            str(tmp_path / "out"),
            *tiny_weights,
        ]
    )  # the default --max-error-ratio: 1% of this run's images
    assert rc == 1
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["status"] == "error ratio exceeded" and manifest["counts"]["failed"] == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the run in one line, last
    assert last.startswith("error: run ") and "1 labeled, 2 failed, 0 skipped" in last
    assert "66.7% of this run's images failed, over --max-error-ratio 1.0%: exit 1" in last


def test_s3_manifest_input_to_s3_output(s3_bucket, tiny_weights, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    local = tmp_path / "images"
    expected = write_image_set(local)
    uris = []
    for name in ("astronaut.jpg", "chelsea.jpg", "truncated.jpg", "cmyk.jpg"):
        fs.put(str(local / name), f"{s3_bucket}/raw/{name}")
        uris.append(f"{s3_bucket}/raw/{name}")
    manifest = io.StringIO()
    writer = csv.DictWriter(manifest, fieldnames=["uri", "note"])
    writer.writeheader()
    for uri in [*uris, uris[0]]:  # a duplicate entry is labeled once
        writer.writerow({"uri": uri, "note": "x"})
    fs.pipe(f"{s3_bucket}/lists/batch.csv", manifest.getvalue().encode())
    fs.pipe(f"{s3_bucket}/vocab/taxonomy.yaml", TAXONOMY.encode())

    output = f"{s3_bucket}/labels/run1"
    rc = label_main(
        [
            "--vocab",
            f"{s3_bucket}/vocab/taxonomy.yaml",
            "--input",
            f"{s3_bucket}/lists/batch.csv",
            "--output",
            output,
            "--vocab-cache",
            f"{s3_bucket}/vocab-cache",
            "--max-error-ratio",
            "0.5",  # truncated.jpg on purpose
            *tiny_weights,
        ]
    )
    assert rc == 0
    rows = _rows(output)
    assert sorted(r["image_uri"] for r in rows) == sorted(uris)
    errors = {Path(r["image_uri"]).name: r["error"] for r in rows}
    assert expected["truncated.jpg"] in errors["truncated.jpg"] and errors["astronaut.jpg"] is None
    assert json.loads(fs.cat(f"{output}/_manifest.json"))["counts"]["labeled"] == 3
    assert fs.ls(f"{s3_bucket}/vocab-cache")  # the vocabulary cache lives on S3 too


def test_manifest_formats_and_globs(tmp_path):
    import pyarrow as pa

    (tmp_path / "a").mkdir()
    for name in ("x.jpg", "y.png", "z.txt"):
        (tmp_path / "a" / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("# comment\n/data/1.jpg\n\n/data/2.jpg\n")
    pq.write_table(pa.table({"uri": ["s3://b/1.jpg", "s3://b/2.jpg"]}), tmp_path / "list.parquet")
    (tmp_path / "bad.csv").write_text("path\n/data/1.jpg\n")
    assert list_inputs(str(tmp_path / "list.txt")) == ["/data/1.jpg", "/data/2.jpg"]
    assert list_inputs(str(tmp_path / "list.parquet")) == ["s3://b/1.jpg", "s3://b/2.jpg"]
    # a spreadsheet's export: a byte-order mark, quoted commas, a blank cell and a short row
    csv_text = '\ufeffnote,uri\n"a, b",/data/1.jpg\n"",\nc," /data/3.jpg "\nd\n'
    (tmp_path / "list.csv").write_text(csv_text, encoding="utf-8")
    assert list_inputs(str(tmp_path / "list.csv")) == ["/data/1.jpg", "/data/3.jpg"]
    assert list_inputs(str(tmp_path / "a" / "*.png")) == [str(tmp_path / "a" / "y.png")]
    assert list_inputs(str(tmp_path / "a")) == [str(tmp_path / "a" / "x.jpg"), str(tmp_path / "a" / "y.png")]
    with pytest.raises(InputError, match="no 'uri' column"):
        list_inputs(str(tmp_path / "bad.csv"))
    with pytest.raises(InputError, match="no such file"):
        list_inputs(str(tmp_path / "missing"))


def test_labeling_actors_run_each_call_on_their_main_thread():
    """Ray Data hands a callable class's calls to a thread of their own unless the pool says
    otherwise, and PyTorch's CPU kernels ran some 20% slower there (benchmarks/README.md): the
    labeling actors' pool keeps every call on the actor's main thread."""
    import ray

    from pipeline.labeling.actors import ActorLayout

    class WhereCalled:  # defined here, so that Ray ships the class itself to the actors
        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            import threading

            on_main_thread = threading.current_thread() is threading.main_thread()
            return {"id": batch["id"], "on_main_thread": np.full(len(batch["id"]), on_main_thread)}

    for concurrency, batch_size in (((1, 1), 2), ((1, 2), 3)):  # one actor, and a pool that may grow to two
        layout = ActorLayout(gpus=0.0, concurrency=concurrency, batch_size=batch_size)
        rows = ray.data.range(12).map_batches(WhereCalled, batch_size=layout.batch_size, **layout.pool()).take_all()
        assert sorted(r["id"] for r in rows) == list(range(12))
        assert all(r["on_main_thread"] for r in rows), rows

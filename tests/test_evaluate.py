"""jobs/evaluate.py: scoring outputs against ground truth, both modes, and the reports."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from image_fixtures import GOOD_PHOTOS, jpeg_bytes
from PIL import Image

from jobs.evaluate import main as evaluate_main
from jobs.label import main as label_main
from pipeline.evaluation.scoring import ScoringSpec, list_ground_truth
from pipeline.inputs import InputError
from pipeline.masks.label_maps import decode_label_map
from pipeline.store import LabelStore
from schemas.taxonomy import Taxonomy, load_taxonomy

pytestmark = pytest.mark.usefixtures("ray_session")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_unlabeled_predictions_count_as_wrong_and_ignore_is_ignored():
    taxonomy = Taxonomy(name="t", classes=[{"id": 5, "name": "a"}, {"id": 9, "name": "b"}])
    spec = ScoringSpec.for_taxonomy(taxonomy, ignore_label=255)
    prediction_ids = np.array([[5, 5, 0, 9]])  # one pixel left unlabeled (a distractor won there)
    ground_truth = np.array([[0, 0, 0, 255]])
    metrics = spec.confusion(prediction_ids, ground_truth).metrics()
    assert metrics["IoU"][0] == pytest.approx(100 * 2 / 3)  # class a: 2 of its 3 pixels
    assert math.isnan(metrics["IoU"][1])  # b only predicted on an ignored pixel, absent from GT
    assert metrics["pACC"] == pytest.approx(100 * 2 / 3)
    with pytest.raises(ValueError, match="outside 0..1"):
        spec.confusion(prediction_ids, np.array([[0, 1, 2, 0]]))


def test_sixteen_bit_tiff_ground_truth_with_65535_ignore(tmp_path):
    gt = np.array([[0, 1], [65535, 1]], dtype=np.uint16)
    Image.fromarray(gt).save(tmp_path / "x.tif")
    read = decode_label_map((tmp_path / "x.tif").read_bytes()).astype(np.int64)
    assert read.tolist() == [[0, 1], [65535, 1]]
    taxonomy = Taxonomy(name="t", classes=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    metrics = ScoringSpec.for_taxonomy(taxonomy, 65535).confusion(np.array([[1, 2], [1, 2]]), read).metrics()
    assert metrics["mIoU"] == pytest.approx(100)


@pytest.fixture(scope="module")
def labeled(ray_session, tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("eval")
    images = root / "images"
    images.mkdir()
    import skimage.data

    for i in range(3):
        (images / f"photo{i}.jpg").write_bytes(jpeg_bytes(getattr(skimage.data, GOOD_PHOTOS[i])()))
    output = root / "labels"
    assert label_main(["--vocab", "voc20", "--input", str(images), "--output", str(output), *tiny_weights]) == 0
    return root, output


def test_perfect_ground_truth_scores_100_and_reports_are_written(labeled, capsys):
    root, output = labeled
    gt_dir = root / "perfect-gt"
    gt_dir.mkdir()
    for row in LabelStore(str(output)).rows():
        ids = decode_label_map(row["label_map_png"]).astype(np.int64)
        gt = (ids - 1).astype(np.uint8)  # voc20 ids are 1..20, ground truth indices 0..19
        gt[:5] = 255  # ignored rows change nothing
        (gt_dir / f"{Path(row['image_uri']).stem}.png").write_bytes(_png(gt))
    report = root / "report-perfect"
    assert (
        evaluate_main(
            [
                "score",
                "--input",
                str(output),
                "--ground-truth",
                str(gt_dir),
                "--vocab",
                "voc20",
                "--output",
                str(report),
            ]
        )
        == 0
    )
    result = json.loads((report / "metrics.json").read_text())
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert result[key] == pytest.approx(100.0)
    assert result["images"] == {"scored": 3, "missing_ground_truth": 0, "errors": 0}
    present = [r for r in result["per_class"] if r["IoU"] is not None]
    assert present and all(r["IoU"] == pytest.approx(100) for r in present)
    assert len(result["per_class"]) == 20
    markdown = (report / "metrics.md").read_text()
    assert markdown.startswith("# voc20: mIoU 100.00") and "| class | IoU | ACC |" in markdown
    with Image.open(report / "iou.png") as chart:
        assert chart.width > 400
    assert "mIoU 100.00" in capsys.readouterr().out


def test_mode_a_and_mode_b_agree_on_the_same_images(tmp_path, tiny_weights):
    """(a) runs the pipeline over a benchmark layout; (b) scores that output again: same numbers."""
    import skimage.data

    voc = tmp_path / "datasets" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "annotations_detectron2" / "val").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(GOOD_PHOTOS):
        photo = getattr(skimage.data, name)()
        (voc / "JPEGImages" / f"2008_{i:06d}.jpg").write_bytes(jpeg_bytes(photo))
        if i < 3:  # the fourth image has no ground truth: not part of the split
            gt = rng.integers(0, 20, size=photo.shape[:2]).astype(np.uint8)
            gt[:, :10] = 255
            (voc / "annotations_detectron2" / "val" / f"2008_{i:06d}.png").write_bytes(_png(gt))
    report_a = tmp_path / "report-a"
    assert (
        evaluate_main(
            [
                "run",
                "--dataset",
                "voc20",
                "--input",
                str(tmp_path / "datasets"),
                "--output",
                str(report_a),
                *tiny_weights,
            ]
        )
        == 0
    )
    a = json.loads((report_a / "metrics.json").read_text())
    assert a["images"]["scored"] == 3
    labels = report_a / "labels"
    assert len(list(LabelStore(str(labels)).rows())) == 3  # only images with ground truth were labeled

    report_b = tmp_path / "report-b"
    assert (
        evaluate_main(
            [
                "score",
                "--input",
                str(labels),
                "--ground-truth",
                str(voc / "annotations_detectron2" / "val"),
                "--vocab",
                "voc20",
                "--output",
                str(report_b),
            ]
        )
        == 0
    )
    b = json.loads((report_b / "metrics.json").read_text())
    assert a == b
    assert 0 <= a["mIoU"] < 100 and a["pACC"] < 100


def test_ground_truth_manifests(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"image_uri": ["s3://b/x/img1.jpg"], "label_uri": ["s3://b/y/img1.png"]}), tmp_path / "gt.parquet"
    )
    (tmp_path / "gt.csv").write_text("uri,label_uri\n/data/a.jpg,/gt/a.png\n")
    assert list_ground_truth(str(tmp_path / "gt.parquet")) == {"img1": "s3://b/y/img1.png"}
    assert list_ground_truth(str(tmp_path / "gt.csv")) == {"a": "/gt/a.png"}
    (tmp_path / "bad.csv").write_text("image_uri\n/data/a.jpg\n")
    with pytest.raises(InputError, match="no 'label_uri' column"):
        list_ground_truth(str(tmp_path / "bad.csv"))


def test_shipped_benchmark_layouts_use_their_vocabularies():
    from pipeline.evaluation.benchmarks import BENCHMARKS

    for name, (_, _, ignore) in BENCHMARKS.items():
        assert load_taxonomy(name).name == name
        assert ignore in (255, 65535)

"""Annotation exports from other people's tools, as `san finetune --train` imports them: names that
lead out of the images' root (`..`, absolute paths, symbolic links, Label Studio's local-files
URLs, other S3 prefixes), declared sizes far past --max-pixels, masks that do not match their
image, and JSON too deep or too large. Each is refused in one line naming the image or task,
before anything of the declared size is made and before any image is opened."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from pipeline.inputs import InputError
from pipeline.masks.brush import brush_mask, brush_rle
from pipeline.training import imports
from pipeline.training.imports import import_annotations
from schemas.taxonomy import load_taxonomy

SAN = Path(sys.executable).parent / "san"
VOC = load_taxonomy("voc20")


def _coco(file_name: str, width: int = 64, height: int = 48, segmentation=None, info=None) -> dict:
    document = {
        "images": [{"id": 1, "file_name": file_name, "width": width, "height": height}],
        "annotations": [],
        "categories": [{"id": 1, "name": "cat"}],
    }
    if segmentation is not None:
        document["annotations"].append({"id": 7, "image_id": 1, "category_id": 1, "segmentation": segmentation})
    if info is not None:
        document["info"] = info
    return document


def _import(tmp_path: Path, document, **options) -> str:
    exports = tmp_path / "exports"
    exports.mkdir(exist_ok=True)
    source = exports / "export.json"
    source.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return import_annotations(str(source), VOC, str(tmp_path / "imported"), **options)


def _ls_task(image: str, results: list[dict]) -> list[dict]:
    return [{"id": 42, "data": {"image": image}, "annotations": [{"result": results}]}]


def _brush_result(rle: list[int], width: int, height: int) -> dict:
    return {"type": "brushlabels", "original_width": width, "original_height": height,
            "value": {"rle": rle, "brushlabels": ["cat"]}}  # fmt: skip


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """The images' root: the export's folder, with one real image in it."""
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"not read by the import")
    return folder


def test_names_inside_the_root_are_imported(tmp_path, images):
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:20, 5:30] = 1
    rle = coco_mask.encode(np.asfortranarray(mask))
    segmentation = {"size": [48, 64], "counts": rle["counts"].decode()}
    _import(tmp_path, _coco("cat.jpg", segmentation=segmentation))
    _import(tmp_path, _coco(str(images / "cat.jpg")))  # absolute, inside
    _import(tmp_path, _coco("sub/../cat.jpg"))  # a `..` that stays inside
    _import(tmp_path, _ls_task("/data/local-files/?d=cat.jpg", [_brush_result(brush_rle(mask > 0), 64, 48)]))


@pytest.mark.parametrize(
    "name",
    ["../../../../../../etc/passwd", "/etc/passwd", "file:///etc/passwd", "s3://other-bucket/cat.jpg", "", None, 7],
)
def test_a_coco_name_outside_the_root_is_refused(tmp_path, images, name):
    with pytest.raises(InputError, match=r"^image 1 \(.*\): ") as refused:
        _import(tmp_path, _coco(name))
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "imported" / "pairs.parquet").exists()


def test_a_fifo_outside_the_root_is_never_opened(tmp_path, images):
    # opening a FIFO for reading blocks until a writer comes: an import that opened it would hang
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.mkfifo(outside / "secret.jpg")
    for name in (str(outside / "secret.jpg"), "../elsewhere/secret.jpg"):
        with pytest.raises(InputError, match="outside the images' root"):
            _import(tmp_path, _coco(name))
    os.symlink(outside / "secret.jpg", images / "link.jpg")  # a link inside the root, leading out
    with pytest.raises(InputError, match=r"image 'link.jpg' is outside the images' root"):
        _import(tmp_path, _coco("link.jpg"))


def test_the_export_declares_its_root_and_image_root_pins_it(tmp_path, images):
    other = tmp_path / "photos"
    other.mkdir()
    _import(tmp_path, _coco("cat.jpg", info={"image_root": str(other)}))  # san export writes image_root
    with pytest.raises(InputError, match=f"outside the images' root {other}"):
        _import(tmp_path, _coco("../exports/cat.jpg", info={"image_root": str(other)}))
    with pytest.raises(InputError, match=f"outside the images' root {images}"):  # the user's root wins
        _import(tmp_path, _coco("/", info={"image_root": "/"}), image_root=str(images))


def test_label_studio_paths_outside_the_root_are_refused(tmp_path, images):
    brush = [_brush_result(brush_rle(np.ones((4, 4), bool)), 4, 4)]
    for image in ("/etc/passwd", "/data/local-files/?d=../../../etc/passwd", "../../etc/passwd"):
        with pytest.raises(InputError, match=r"^task 42: image .* is outside the images' root"):
            _import(tmp_path, _ls_task(image, brush))
    tasks = [{"id": 43, "data": {"san_image_uri": "/etc/shadow"}, "annotations": [{"result": brush}]}]
    with pytest.raises(InputError, match=r"^task 43: image '/etc/shadow' is outside"):
        _import(tmp_path, tasks)


def test_s3_names_stay_under_the_prefix(tmp_path, s3_bucket):
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).pipe(f"{s3_bucket}/exports/export.json", json.dumps(_coco("cat.jpg")))
    import_annotations(f"{s3_bucket}/exports/export.json", VOC, str(tmp_path / "ok"))
    for name in ("../private/key.jpg", f"{s3_bucket}/exports-evil/cat.jpg", "s3://another-bucket/exports/cat.jpg"):
        s3fs.S3FileSystem(skip_instance_cache=True).pipe(f"{s3_bucket}/exports/export.json", json.dumps(_coco(name)))
        with pytest.raises(InputError, match=f"outside the images' root {s3_bucket}/exports"):
            import_annotations(f"{s3_bucket}/exports/export.json", VOC, str(tmp_path / "no"))


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (100_000, 100_000, r"declared size 100000x100000 \(10,000,000,000 pixels\) is over --max-pixels 100,000,000"),
        (30_000, 30_000, r"declared size 30000x30000 \(900,000,000 pixels\) is over --max-pixels"),
        (-5, 10, r"declared size -5x10 is not two positive whole numbers"),
        (64.5, 10, r"declared size 64.5x10 is not two positive whole numbers"),
        ("64", 10, r"declared size .64.x10 is not two positive whole numbers"),
    ],
)
def test_declared_sizes_are_checked_before_anything_is_made(tmp_path, images, width, height, message):
    before = _peak_mib()
    segmentation = [[0, 0, 10, 0, 10, 10]]
    with pytest.raises(InputError, match=f"^image 1 \\('cat.jpg'\\): {message}"):
        _import(tmp_path, _coco("cat.jpg", width, height, segmentation))  # 517 bytes took SIGSEGV
    tasks = _ls_task("cat.jpg", [_brush_result([0] * 16, width, height)])
    with pytest.raises(InputError, match=f"^task 42: {message}"):
        _import(tmp_path, tasks)
    assert _peak_mib() - before < 100


def test_masks_that_do_not_fit_their_image_are_refused(tmp_path, images):
    cases = {
        "size": {"size": [4096, 4096], "counts": "PPYo1"},
        "do not add up": {"size": [48, 64], "counts": [5, 10]},
        "compressed RLE counts that do not add up": {"size": [48, 64], "counts": "5:"},
        "at most one character a pixel": {"size": [48, 64], "counts": "0" * 20_000_000},  # 20 MB
        "far outside": [[0, 0, 1e12, 0, 1e12, 1e12]],
        "neither polygons nor RLE": "cat",
    }
    for message, segmentation in cases.items():
        started = time.monotonic()
        with pytest.raises(InputError, match=f"^annotation 7 of image 1: its mask cannot be decoded \\(.*{message}"):
            _import(tmp_path, _coco("cat.jpg", segmentation=segmentation))
        assert time.monotonic() - started < 10


def test_hostile_brush_masks_are_refused(tmp_path, images):
    drawn = np.random.default_rng(0).random((48, 64)) < 0.5
    good = brush_rle(drawn)
    assert (brush_mask(good, 48, 64) == drawn).all()
    huge = [0xFF, 0xFF, 0xFF, 0xFC] + good[4:] + [0xAA] * 549_000  # claims 4 billion values; 549 KB
    cases = {
        "huge": (huge, "a brush RLE of 5[0-9][0-9],[0-9]+ values for 64x48 pixels"),
        "lying header": ([0xFF, 0xFF, 0xFF, 0xFC] + good[4:], "not the 12,288 bytes of 64x48 RGBA"),
        "cut short": (good[: len(good) // 2], "ends after"),
        "not bytes": ([300] * 8, "byte values"),
        "a string": ("AAAA", "a brush RLE of str for 64x48 pixels"),
    }
    before = _peak_mib()
    for rle, message in cases.values():
        with pytest.raises(InputError, match=f"^task 42: its mask cannot be decoded \\(.*{message}"):
            _import(tmp_path, _ls_task("cat.jpg", [_brush_result(rle, 64, 48)]))
    assert _peak_mib() - before < 200  # the 549 KB RLE took 2.59 GiB


def test_json_too_deep_or_too_large(tmp_path, images, monkeypatch):
    with pytest.raises(InputError, match="JSON nested too deeply"):
        _import(tmp_path, "[" * 100_000 + "]" * 100_000)
    monkeypatch.setattr(imports, "MAX_EXPORT_BYTES", 1_000_000)
    with pytest.raises(InputError, match="larger than 1,000,000 bytes, the limit for an annotation export"):
        _import(tmp_path, json.dumps(_coco("cat.jpg") | {"padding": "x" * 1_000_000}))


def test_san_finetune_refuses_in_one_line_and_exit_1(tmp_path, images, parity_dir):
    source = images / "evil.json"
    source.write_text(json.dumps(_coco("../../../../../../etc/passwd")))
    tiny = parity_dir / "tiny_a"
    command = [str(SAN), "finetune", "--vocab", "voc20", "--train", str(source), "--output", str(tmp_path / "run")]
    command += ["--checkpoint", str(tiny / "checkpoint.pth"), "--model-config", str(tiny / "config.json")]
    command += ["--max-steps", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and "image 1 ('../../../../../../etc/passwd'): image" in errors[0], result.stderr
    assert "outside the images' root" in errors[0]

"""Names an attacker controls: image file names (newlines, unicode, leading dashes, a symlink loop
in the input folder) and class names that look like paths or markup. The job labels every file
under its own name and writes nothing outside its output; the COCO export carries the names as
data."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import skimage.data
from PIL import Image

from jobs.export import main as export_main
from jobs.label import main as label_main

pytestmark = pytest.mark.usefixtures("ray_session")

CLASS_NAMES = ["../../../escaped", "<script>alert(1)</script>", "/etc/passwd", "sky"]
FILE_NAMES = ["line\nbreak.jpg", "фото 😀.jpg", "-rf --overwrite.jpg", "..jpg", "quote'\"$(id).jpg"]


def _photo(index: int) -> bytes:
    buffer = io.BytesIO()
    photo = (skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea())[index % 3]
    Image.fromarray(photo).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _files(root: Path) -> set[Path]:
    return {Path(dirpath) / name for dirpath, _, names in os.walk(root) for name in names}


def test_hostile_names_label_and_export_inside_the_output(tmp_path, tiny_weights):
    images = tmp_path / "images"
    images.mkdir()
    for index, name in enumerate(FILE_NAMES):
        (images / name).write_bytes(_photo(index))
    (images / "loop").symlink_to(images, target_is_directory=True)  # a folder that contains itself
    taxonomy = tmp_path / "taxonomy.yaml"
    classes = "".join(f"  - {{id: {i + 1}, name: {json.dumps(name)}}}\n" for i, name in enumerate(CLASS_NAMES))
    taxonomy.write_text(f"name: hostile\nversion: 1\nclasses:\n{classes}")
    before = _files(tmp_path)
    output = tmp_path / "out" / "labels"

    rc = label_main(
        [
            "--vocab", str(taxonomy), "--input", str(images), "--output", str(output),
            "--preview", str(len(FILE_NAMES)), "--vocab-cache", str(tmp_path / "out" / "cache"), *tiny_weights,
        ]
    )  # fmt: skip
    assert rc == 0
    coco_path = tmp_path / "out" / "labels.coco.json"
    assert export_main(["--input", str(output), "--vocab", str(taxonomy), "--output", str(coco_path)]) == 0

    rows = ds.dataset(str(output), format="parquet").to_table().to_pylist()
    assert sorted(Path(r["image_uri"]).name for r in rows) == sorted(FILE_NAMES)  # each once, loop not followed
    assert all(r["error"] is None for r in rows)
    previews = list((output / "_previews").iterdir())
    assert len(previews) == len(FILE_NAMES) and all(p.parent == output / "_previews" for p in previews)
    created = _files(tmp_path) - before
    assert created and all((tmp_path / "out") in path.parents for path in created), sorted(created)
    assert not any("escaped" in str(path) or "passwd" in str(path) for path in created)

    coco = json.loads(coco_path.read_text())
    assert [c["name"] for c in coco["categories"]] == CLASS_NAMES
    assert sorted(Path(i["file_name"]).name for i in coco["images"]) == sorted(FILE_NAMES)

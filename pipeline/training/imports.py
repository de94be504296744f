"""Corrections from annotation tools as training data: a COCO JSON (what CVAT, Label Studio and
most tools export) or a Label Studio JSON export, turned into label maps of taxonomy ids beside a
manifest that `san finetune` reads like any other.

Categories map to the taxonomy by name (case and surrounding spaces ignored), else by id; a
category that matches neither stops the import, naming it. Each image's label map starts
unlabeled (0, ignored by the loss) and its annotations are painted largest first, so a small
object drawn over a large region keeps its pixels. COCO segmentations may be polygons, RLE or
compressed RLE; Label Studio results may be brush masks (its RLE) or polygons (in percent of the
image), from the task's latest annotation that was not cancelled.

Image locations: a COCO `file_name` is resolved against the JSON's `info.image_root` (`san
export` writes it) or the JSON's own folder; a Label Studio task against `data.san_image_uri`
(`san export` writes it), else `data.image` when it is a URI or a path.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.taxonomy import Taxonomy

from ..inputs import InputError
from ..masks.brush import brush_mask
from ..masks.coco_rle import coco_mask_of
from ..masks.label_maps import encode_label_png
from ..storage import with_protocol


@dataclass
class Region:
    """One annotated region of an image: its taxonomy id and its mask."""

    class_id: int
    mask: np.ndarray  # [H, W] bool


class CategoryMap:
    """Tool categories -> taxonomy ids, by name, else by id."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.by_name = {c.name.strip().lower(): c.id for c in taxonomy.classes}
        self.ids = {c.id for c in taxonomy.classes}
        self.taxonomy = taxonomy

    def __call__(self, name: str | None, category_id: int | None = None) -> int:
        if name is not None and name.strip().lower() in self.by_name:
            return self.by_name[name.strip().lower()]
        if category_id is not None and category_id in self.ids:
            return category_id
        raise InputError(
            f"category {name!r} (id {category_id}) is not in taxonomy {self.taxonomy.name}: name it as the "
            "taxonomy does, or add it to the taxonomy"
        )


def paint(regions: Iterable[Region], height: int, width: int) -> np.ndarray:
    """A label map of taxonomy ids: 0 where nothing is drawn, the largest regions painted first."""
    label_map = np.zeros((height, width), dtype=np.uint16)
    for region in sorted(regions, key=lambda r: -int(r.mask.sum())):
        label_map[region.mask] = region.class_id
    return label_map


def coco_images(document: Mapping[str, Any], base: str, categories: CategoryMap) -> Iterable[tuple[str, np.ndarray]]:
    """(image URI, label map) per image of a COCO document, images without annotations included
    (an image a person left empty is all unlabeled)."""
    names = {c["id"]: c.get("name") for c in document.get("categories", [])}
    root = (document.get("info") or {}).get("image_root") or base
    by_image: dict[int, list[Region]] = {}
    images = {image["id"]: image for image in document.get("images", [])}
    for annotation in document.get("annotations", []):
        image = images.get(annotation["image_id"])
        if image is None:
            raise InputError(f"annotation {annotation.get('id')} refers to no image ({annotation['image_id']})")
        class_id = categories(names.get(annotation["category_id"]), annotation["category_id"])
        mask = coco_mask_of(annotation["segmentation"], image["height"], image["width"])
        by_image.setdefault(image["id"], []).append(Region(class_id, mask))
    for image_id, image in images.items():
        yield _resolve(image["file_name"], root), paint(by_image.get(image_id, []), image["height"], image["width"])


def label_studio_images(
    tasks: list[Mapping[str, Any]], base: str, categories: CategoryMap
) -> Iterable[tuple[str, np.ndarray]]:
    """(image URI, label map) per task of a Label Studio JSON export with an annotation."""
    for task in tasks:
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if not annotations:
            continue
        data = task.get("data", {})
        uri = data.get("san_image_uri") or _label_studio_uri(str(data.get("image", "")), base)
        regions, size = [], None
        for result in annotations[-1].get("result", []):
            kind = result.get("type", "").lower()
            value = result.get("value", {})
            width, height = result.get("original_width"), result.get("original_height")
            if kind not in ("brushlabels", "polygonlabels") or width is None or height is None:
                continue
            size = (height, width)
            labels = value.get(kind) or []
            class_id = categories(labels[0] if labels else None)
            if kind == "brushlabels":
                mask = brush_mask(value["rle"], height, width)
            else:
                polygon = [v for x, y in value["points"] for v in (x * width / 100, y * height / 100)]
                mask = coco_mask_of([polygon], height, width)
            regions.append(Region(class_id, mask))
        if size is not None:
            yield uri, paint(regions, *size)


def _label_studio_uri(url: str, base: str) -> str:
    parsed = urlparse(url)
    if parsed.path.startswith("/data/local-files/"):  # Label Studio's local files: relative to its root
        return _resolve(unquote(parse_qs(parsed.query).get("d", [""])[0]), base)
    if not url:
        raise InputError("a Label Studio task without data.image or data.san_image_uri")
    return _resolve(url, base)


def _resolve(name: str, root: str) -> str:
    return name if "://" in name or name.startswith("/") else posixpath.join(root.rstrip("/"), name)


def import_annotations(
    source: str, taxonomy: Taxonomy, destination: str, storage_options: Mapping[str, Any] | None = None
) -> str:
    """Write the label maps of a COCO or Label Studio JSON under `destination` and a manifest
    (image_uri, label_uri: taxonomy ids) beside them; returns the manifest's URI."""
    options = dict(storage_options or {})
    try:
        with fsspec.open(source, "rb", **options) as f:
            document = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {source} as JSON: {e}") from e
    fs, path = fsspec.core.url_to_fs(source, **options)
    base = with_protocol(path.rsplit("/", 1)[0] if "/" in path else ".", source)
    categories = CategoryMap(taxonomy)
    if isinstance(document, dict) and "images" in document and "annotations" in document:
        pairs = coco_images(document, base, categories)
    elif isinstance(document, list):
        pairs = label_studio_images(document, base, categories)
    else:
        raise InputError(f"{source} is neither a COCO JSON (images, annotations) nor a Label Studio export (a list)")
    out_fs, out = fsspec.core.url_to_fs(destination, **options)
    out = out.rstrip("/")
    out_fs.makedirs(f"{out}/labels", exist_ok=True)
    images, labels = [], []
    for number, (image_uri, label_map) in enumerate(pairs):
        label_path = f"{out}/labels/{number:07d}.png"
        out_fs.pipe(label_path, encode_label_png(label_map))
        images.append(image_uri)
        labels.append(with_protocol(label_path, destination))
    if not images:
        raise InputError(f"{source} holds no annotated image")
    manifest = f"{out}/pairs.parquet"
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image_uri": images, "label_uri": labels}), buffer)
    out_fs.pipe(manifest, buffer.getvalue())
    return with_protocol(manifest, destination)

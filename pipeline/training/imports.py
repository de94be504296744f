"""Corrections from annotation tools as training data: a COCO JSON (what CVAT, Label Studio and
most tools export) or a Label Studio JSON export, turned into label maps of taxonomy ids beside a
manifest that `san finetune` reads like any other.

Categories map to the taxonomy by name (case and surrounding spaces ignored), else by id; a
category that matches neither stops the import, naming it. Each image's label map starts
unlabeled (0, ignored by the loss) and its annotations are painted largest first, so a small
object drawn over a large region keeps its pixels. COCO segmentations may be polygons, RLE or
compressed RLE; Label Studio results may be brush masks (its RLE) or polygons (in percent of the
image), from the task's latest annotation that was not cancelled.

Image locations: a COCO `file_name` is resolved against the images' root: `--image-root` when
given, else the JSON's `info.image_root` (`san export` writes it), else the JSON's own folder. A
Label Studio task names its image by `data.san_image_uri` (`san export` writes it), else
`data.image` (a URI, a path, or Label Studio's `/data/local-files/?d=...`), against
`--image-root` or the JSON's folder.

Exports come from other people's tools, so everything in one is checked before it is used: every
image must resolve inside the images' root (no `..` out of it, no absolute path or URI elsewhere,
no symbolic link out of a local root), declared sizes are held to `--max-pixels` before any
array is made, the file's size and nesting are bounded, and masks must match the size they are
drawn at. Each refusal is one line naming the image or task; nothing outside the root is opened.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.jobs import MAX_PIXELS
from schemas.taxonomy import Taxonomy

from ..inputs import InputError
from ..masks.brush import brush_mask
from ..masks.coco_rle import coco_mask_of
from ..masks.label_maps import encode_label_png
from ..storage import is_local, with_protocol

# An export is read whole: 1 GiB holds the COCO annotations of about a million instances. Python's
# JSON reader refuses nesting past its recursion limit (about a thousand levels) on its own.
MAX_EXPORT_BYTES = 2**30


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


class ImageRoot:
    """Where the images an export names must be: a local folder or a URI prefix."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/") or "/"
        self.local = is_local(root)
        # a local root by its real path: a symbolic link inside must not lead out of it
        self.real = os.path.realpath(self.root.removeprefix("file://")) if self.local else self.root

    def resolve(self, name: Any, what: str) -> str:
        """The URI of `name` (relative to the root, or absolute), or InputError naming `what`
        when it is not a path or lies outside the root."""
        if not isinstance(name, str) or not name.strip() or "\x00" in name:
            raise InputError(f"{what}: the image is named by {name!r}, not a path")
        absolute = "://" in name or name.startswith("/")
        uri = name if absolute else f"{self.root}/{name}"
        if self.local and is_local(uri):
            inside = os.path.realpath(uri.removeprefix("file://"))
            ok = inside == self.real or inside.startswith(self.real.rstrip("/") + "/")
        elif not self.local and not is_local(uri):
            protocol, path = uri.split("://", 1)
            inside = f"{protocol}://{posixpath.normpath(path)}"
            ok = inside.startswith(self.real + "/")
        else:
            ok = False
        if not ok:
            raise InputError(
                f"{what}: image {name!r} is outside the images' root {self.root} (pass --image-root to name the "
                "folder the export's images are in)"
            )
        return uri


def _size(item: Mapping[str, Any], height_key: str, width_key: str, max_pixels: int, what: str) -> tuple[int, int]:
    """A declared image size, checked before anything of that size is made."""
    height, width = item.get(height_key), item.get(width_key)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (height, width)):
        raise InputError(f"{what}: declared size {width!r}x{height!r} is not two positive whole numbers")
    if height * width > max_pixels:
        raise InputError(
            f"{what}: declared size {width}x{height} ({height * width:,} pixels) is over --max-pixels {max_pixels:,}"
        )
    return height, width


def _mask(what: str, decode: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
    """`decode(*args)`, with any decoding failure as one line naming `what`."""
    try:
        return decode(*args)
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
        raise InputError(f"{what}: its mask cannot be decoded ({e})") from None


def _percent_polygon_mask(points: Any, height: int, width: int) -> np.ndarray:
    """A Label Studio polygon (points in percent of the image) as a mask."""
    polygon = [v for x, y in points for v in (float(x) * width / 100, float(y) * height / 100)]
    return coco_mask_of([polygon], height, width)


def coco_images(
    document: Mapping[str, Any], root: ImageRoot, categories: CategoryMap, max_pixels: int
) -> Iterable[tuple[str, np.ndarray]]:
    """(image URI, label map) per image of a COCO document, images without annotations included
    (an image a person left empty is all unlabeled)."""
    names = {c["id"]: c.get("name") for c in document.get("categories", [])}
    by_image: dict[int, list[Region]] = {}
    images: dict[Any, tuple[str, tuple[int, int]]] = {}
    for image in document.get("images", []):  # every image checked before any mask is made
        what = f"image {image.get('id')} ({image.get('file_name')!r})"
        images[image.get("id")] = (
            root.resolve(image.get("file_name"), what),
            _size(image, "height", "width", max_pixels, what),
        )
    for annotation in document.get("annotations", []):
        if annotation.get("image_id") not in images:
            raise InputError(f"annotation {annotation.get('id')} refers to no image ({annotation.get('image_id')})")
        _, (height, width) = images[annotation["image_id"]]
        class_id = categories(names.get(annotation.get("category_id")), annotation.get("category_id"))
        what = f"annotation {annotation.get('id')} of image {annotation['image_id']}"
        mask = _mask(what, coco_mask_of, annotation.get("segmentation"), height, width)
        by_image.setdefault(annotation["image_id"], []).append(Region(class_id, mask))
    for image_id, (uri, size) in images.items():
        yield uri, paint(by_image.get(image_id, []), *size)


def label_studio_images(
    tasks: list[Mapping[str, Any]], root: ImageRoot, categories: CategoryMap, max_pixels: int
) -> Iterable[tuple[str, np.ndarray]]:
    """(image URI, label map) per task of a Label Studio JSON export with an annotation."""
    for number, task in enumerate(tasks):
        if not isinstance(task, Mapping):
            raise InputError(f"task #{number} of the export is not an object")
        what = f"task {task.get('id', f'#{number}')}"
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not annotations:
            continue
        data = task.get("data") or {}
        uri = _label_studio_uri(data, root, what)
        regions, size = [], None
        for result in annotations[-1].get("result") or []:
            kind = str(result.get("type", "")).lower()
            value = result.get("value") or {}
            if kind not in ("brushlabels", "polygonlabels") or result.get("original_width") is None:
                continue
            height, width = _size(result, "original_height", "original_width", max_pixels, what)
            if size is not None and size != (height, width):
                raise InputError(f"{what}: its results declare two image sizes, {size} and {(height, width)}")
            size = (height, width)
            labels = value.get(kind) or []
            class_id = categories(labels[0] if labels else None)
            if kind == "brushlabels":
                mask = _mask(what, brush_mask, value.get("rle"), height, width)
            else:
                mask = _mask(what, _percent_polygon_mask, value.get("points") or [], height, width)
            regions.append(Region(class_id, mask))
        if size is not None:
            yield uri, paint(regions, *size)


def _label_studio_uri(data: Mapping[str, Any], root: ImageRoot, what: str) -> str:
    if data.get("san_image_uri"):
        return root.resolve(data["san_image_uri"], what)
    url = data.get("image")
    if not url:
        raise InputError(f"{what}: no data.image or data.san_image_uri")
    parsed = urlparse(str(url))
    if parsed.path.startswith("/data/local-files/"):  # Label Studio's local files: relative to its root
        return root.resolve(unquote(parse_qs(parsed.query).get("d", [""])[0]).lstrip("/"), what)
    return root.resolve(url, what)


def read_export(source: str, options: Mapping[str, Any]) -> Any:
    """An export's JSON, its size and nesting bounded."""
    try:
        with fsspec.open(source, "rb", **options) as f:
            data = f.read(MAX_EXPORT_BYTES + 1)
        if len(data) > MAX_EXPORT_BYTES:
            raise InputError(f"{source}: larger than {MAX_EXPORT_BYTES:,} bytes, the limit for an annotation export")
        return json.loads(data)
    except RecursionError:
        raise InputError(f"{source}: JSON nested too deeply to be an annotation export") from None
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {source} as JSON: {e}") from e


def import_annotations(
    source: str,
    taxonomy: Taxonomy,
    destination: str,
    storage_options: Mapping[str, Any] | None = None,
    image_root: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> str:
    """Write the label maps of a COCO or Label Studio JSON under `destination` and a manifest
    (image_uri, label_uri: taxonomy ids) beside them; returns the manifest's URI. Every image must
    be inside `image_root` (default: see the module docstring) and within `max_pixels`."""
    options = dict(storage_options or {})
    document = read_export(source, options)
    fs, path = fsspec.core.url_to_fs(source, **options)
    folder = with_protocol(path.rsplit("/", 1)[0] if "/" in path else ".", source)
    categories = CategoryMap(taxonomy)
    if isinstance(document, dict) and "images" in document and "annotations" in document:
        declared = (document.get("info") or {}).get("image_root")
        root = ImageRoot(image_root or (declared if isinstance(declared, str) and declared else folder))
        pairs = coco_images(document, root, categories, max_pixels)
    elif isinstance(document, list):
        pairs = label_studio_images(document, ImageRoot(image_root or folder), categories, max_pixels)
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

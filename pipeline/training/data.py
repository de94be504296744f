"""Training samples for fine-tuning: (image, label map) pairs, augmented as the published recipe.

Label maps are 8- or 16-bit PNGs (or TIFFs); their ignore value (255, or 65535 in 16-bit maps)
becomes IGNORE = 65535 in the uint16 arrays used here, so 16-bit maps can use 255 as a class.

Augmentation, as the reference's training config: short side resized to a random choice of 320,
384, ..., 960 (0.5-1.5 x the 640 crop; long side at most 2560), a random 640x640 crop (padded with
128 / ignore when smaller), a horizontal flip with probability 0.5, and SSD-style photometric
jitter (brightness, contrast, saturation, hue). Labels follow every geometric step with
nearest-neighbour sampling. `AugmentConfig.plain` (`san finetune --augment none`) keeps only the
resize of the short side to the crop and the crop: what fitting a handful of corrected images
needs, where the recipe's jitter, meant for tens of thousands of images, slows learning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from PIL import Image

from ..inputs import InputError, explain_read_error, read_manifest_rows
from ..masks.label_maps import LABEL_MAP_EXTENSIONS, decode_label_map
from ..media.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_rgb, load_images, short_side_size
from ..retries import read_bytes
from ..storage import with_protocol

IGNORE = 65535
TRAIN_SHORT_SIDES = tuple(int(x * 0.1 * 640) for x in range(5, 16))  # 320 ... 960
IMAGE_PAD_VALUE = 128


def read_training_labels(data: bytes) -> np.ndarray:
    """A label map file as uint16 [H, W], its ignore value (255 in 8-bit maps, 65535 in 16-bit
    ones) turned into IGNORE."""
    values = decode_label_map(data)
    if values.dtype == np.uint8:
        wide = values.astype(np.uint16)
        wide[values == 255] = IGNORE
        return wide
    return values


@dataclass(frozen=True)
class AugmentConfig:
    short_sides: tuple[int, ...] = TRAIN_SHORT_SIDES
    max_long_side: int = 2560
    crop_size: int = 640
    flip_probability: float = 0.5
    photometric: bool = True

    @classmethod
    def for_crop(cls, crop_size: int, photometric: bool = True) -> AugmentConfig:
        """The recipe scaled to another crop: short sides 0.5-1.5 x crop, long side <= 4 x crop."""
        sides = tuple(max(1, round(crop_size * x / 10)) for x in range(5, 16))
        return cls(sides, 4 * crop_size, crop_size, photometric=photometric)

    @classmethod
    def plain(cls, crop_size: int) -> AugmentConfig:
        """No augmentation: the short side resized to the crop, a random crop along the long side."""
        return cls((crop_size,), 4 * crop_size, crop_size, flip_probability=0.0, photometric=False)

    @classmethod
    def named(cls, name: str, crop_size: int) -> AugmentConfig:
        """`full` (the published recipe) or `none` (`plain`), as `san finetune --augment` names them."""
        return {"full": cls.for_crop, "none": cls.plain}[name](crop_size)


def resize_pair(
    rgb: np.ndarray, labels: np.ndarray, short_side: int, max_long_side: int
) -> tuple[np.ndarray, np.ndarray]:
    h, w = short_side_size(rgb.shape[0], rgb.shape[1], short_side, max_long_side)
    image = np.array(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    label = np.array(Image.fromarray(labels).resize((w, h), Image.NEAREST))
    return image, label


def random_crop_pair(
    rgb: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A size x size window; images smaller than that are padded (128 / ignore) at bottom-right."""
    h, w = labels.shape
    top = int(rng.integers(0, max(h - size, 0) + 1))
    left = int(rng.integers(0, max(w - size, 0) + 1))
    image = np.full((size, size, 3), IMAGE_PAD_VALUE, dtype=np.uint8)
    label = np.full((size, size), IGNORE, dtype=labels.dtype)
    crop_h, crop_w = min(size, h), min(size, w)
    image[:crop_h, :crop_w] = rgb[top : top + crop_h, left : left + crop_w]
    label[:crop_h, :crop_w] = labels[top : top + crop_h, left : left + crop_w]
    return image, label


def photometric_jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SSD colour augmentation: each step with probability 0.5 - brightness +-32, contrast x0.5-1.5
    (before or after the HSV steps), saturation x0.5-1.5, hue +-18 (of 180)."""
    image = rgb.astype(np.float32)

    def contrast(x: np.ndarray) -> np.ndarray:
        return x * rng.uniform(0.5, 1.5) if rng.random() < 0.5 else x

    if rng.random() < 0.5:
        image = image + rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first:
        image = contrast(image)
    hsv = np.array(Image.fromarray(image.clip(0, 255).astype(np.uint8)).convert("HSV")).astype(np.float32)
    if rng.random() < 0.5:
        hsv[..., 1] = (hsv[..., 1] * rng.uniform(0.5, 1.5)).clip(0, 255)
    if rng.random() < 0.5:
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-18, 18) * 256 / 180) % 256  # PIL hue spans 0..255
    image = np.array(Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")).astype(np.float32)
    if not contrast_first:
        image = contrast(image)
    return image.clip(0, 255).astype(np.uint8)


def augment(
    rgb: np.ndarray, labels: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: uint8 RGB [S, S, 3] and label ids [S, S] with S = crop_size."""
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image {rgb.shape[:2]} and label map {labels.shape} differ in size")
    short_side = int(rng.choice(config.short_sides))
    image, label = resize_pair(rgb, labels, short_side, config.max_long_side)
    image, label = random_crop_pair(image, label, config.crop_size, rng)
    if rng.random() < config.flip_probability:
        image, label = image[:, ::-1].copy(), label[:, ::-1].copy()
    if config.photometric:
        image = photometric_jitter(image, rng)
    return image, label


def targets_from_labels(labels: np.ndarray, id_to_index: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(class indices [T], binary masks [T, H, W]) of the classes present: label values are looked
    up in `id_to_index`; IGNORE and values it does not hold (0 = unlabeled) are left out."""
    present = [int(v) for v in np.unique(labels) if int(v) != IGNORE and int(v) in id_to_index]
    indices = np.array([id_to_index[v] for v in present], dtype=np.int64)
    masks = np.stack([labels == v for v in present]) if present else np.zeros((0, *labels.shape), dtype=bool)
    return indices, masks


# --- where the pairs come from ---------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPairs:
    """(image, label map) URIs. `values` says what label maps hold: taxonomy `ids` (manifests, and
    the labeling job's own output; 0 = unlabeled) or class `indices` in taxonomy order (the
    reference's annotations_detectron2 folders)."""

    source: str
    image_uris: list[str]
    label_uris: list[str]
    values: str  # "ids" or "indices"

    def __len__(self) -> int:
        return len(self.image_uris)

    def value_to_index(self, class_ids: list[int]) -> dict[int, int]:
        """Label value -> class index, for a taxonomy whose classes have these ids (in order)."""
        if self.values == "ids":
            return {class_id: index for index, class_id in enumerate(class_ids)}
        return {index: index for index in range(len(class_ids))}


def _manifest_pairs(fs: fsspec.AbstractFileSystem, path: str, source: str) -> tuple[list[str], list[str]]:
    rows = read_manifest_rows(fs, path, ("image_uri", "label_uri"), source)
    base = with_protocol(path.rsplit("/", 1)[0] if "/" in path else ".", source)

    def resolve(entry: Any) -> str:  # entries relative to the manifest's folder
        text = str(entry).strip()
        return text if "://" in text or text.startswith("/") else f"{base}/{text}"

    images = [resolve(r["image_uri"]) for r in rows if r.get("image_uri") and r.get("label_uri")]
    labels = [resolve(r["label_uri"]) for r in rows if r.get("image_uri") and r.get("label_uri")]
    if len(images) != len(rows):
        raise InputError(f"manifest {source}: {len(rows) - len(images)} rows lack an image_uri or a label_uri")
    return images, labels


def _folder_pairs(fs: fsspec.AbstractFileSystem, path: str, source: str) -> tuple[list[str], list[str]]:
    parts = path.rstrip("/").split("/")
    if "images" not in parts:
        raise InputError(
            f"{source}: a training folder must be an images/<split> folder with its label maps in the "
            "sibling annotations_detectron2/<split> (the SAN dataset layout), or use a manifest"
        )
    at = len(parts) - 1 - parts[::-1].index("images")
    label_root = "/".join([*parts[:at], "annotations_detectron2", *parts[at + 1 :]])
    image_root = path.rstrip("/")

    def by_key(root: str, extensions: tuple[str, ...]) -> dict[str, str]:
        found = {}
        for p in fs.find(root) if fs.exists(root) else []:
            if p.lower().endswith(extensions):
                found[p[len(root.rstrip("/")) + 1 :].rsplit(".", 1)[0]] = with_protocol(p, source)
        return found

    images = by_key(image_root, IMAGE_EXTENSIONS)
    labels = by_key(label_root, LABEL_MAP_EXTENSIONS)
    missing = sorted(set(images) - set(labels))
    if missing:
        raise InputError(
            f"{len(missing)} of {len(images)} images under {source} have no label map in "
            f"{with_protocol(label_root, source)} (first: {missing[:3]})"
        )
    keys = sorted(images)
    return [images[k] for k in keys], [labels[k] for k in keys]


def list_training_pairs(source: str, storage_options: Mapping[str, Any] | None = None) -> TrainingPairs:
    """The pairs of a manifest (.parquet/.csv with image_uri, label_uri; label maps of taxonomy ids)
    or of an `.../images/<split>` folder (label maps of class indices in
    `.../annotations_detectron2/<split>`, matched by relative path without extension)."""
    try:
        fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
        if path.endswith((".parquet", ".csv")):
            images, labels = _manifest_pairs(fs, path, source)
            values = "ids"
        elif fs.isdir(path):
            images, labels = _folder_pairs(fs, path, source)
            values = "indices"
        else:
            raise InputError(f"{source} is neither a manifest (.parquet/.csv) nor a folder")
    except InputError:
        raise
    except Exception as e:
        raise InputError(explain_read_error(source, e)) from e
    if not images:
        raise InputError(f"{source} lists no (image, label map) pairs")
    return TrainingPairs(source, images, labels, values)


# --- Ray Data stages -------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleOrder:
    """Which pair the n-th training sample is: epoch n // N visits all N pairs in its own seeded
    permutation. The sample number is the data position a checkpoint records."""

    num_pairs: int
    seed: int

    def pair_index(self, sample: int, permutations: dict[int, np.ndarray]) -> int:
        epoch, position = divmod(sample, self.num_pairs)
        if epoch not in permutations:
            permutations.clear()  # one epoch at a time is all a stream needs
            permutations[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_pairs)
        return int(permutations[epoch][position])


def _read(uri: str, storage_options: Mapping[str, Any] | None) -> bytes:
    data = read_bytes(uri, storage_options)  # an outage in passing costs a retry, not a sample
    if not data:
        raise ValueError("file is empty (0 bytes)")
    return data


class TrainingSampleLoader:
    """Ray Data callable class: sample numbers -> augmented (image, label) crops.

    Each sample's augmentation is seeded by its number, so a resumed run sees the same crops. A
    pair that cannot be read is reported in `skipped` and replaced by the next pair of the epoch,
    so batches stay full.
    """

    def __init__(
        self,
        pairs_ref: list,
        order: SampleOrder,
        augment_config: AugmentConfig,
        storage_options: Mapping[str, Any] | None = None,
        max_attempts: int = 8,
    ) -> None:
        import ray

        shared = pairs_ref[0]
        # (image URIs, label URIs): one object-store copy for every loader, or given directly
        self.image_uris, self.label_uris = ray.get(shared) if isinstance(shared, ray.ObjectRef) else shared
        self.order, self.augment_config = order, augment_config
        self.storage_options, self.max_attempts = storage_options, max_attempts
        self.permutations: dict[int, np.ndarray] = {}

    def _sample(self, sample: int, skipped: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.order.seed, sample])
        for attempt in range(self.max_attempts):
            pair = self.order.pair_index(sample + attempt, self.permutations)
            try:
                rgb = decode_rgb(_read(self.image_uris[pair], self.storage_options))
                labels = read_training_labels(_read(self.label_uris[pair], self.storage_options))
                return augment(rgb, labels, self.augment_config, rng)
            except Exception as e:  # a bad pair is reported and replaced, never fatal
                skipped.append(f"{self.image_uris[pair]} / {self.label_uris[pair]}: {type(e).__name__}: {e}")
        raise RuntimeError(f"{self.max_attempts} pairs in a row could not be read; last: {skipped[-1]}")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        samples = batch["data"].astype(np.int64)  # sample numbers
        images, labels, skipped = [], [], []
        for sample in samples:
            problems: list[str] = []
            image, label = self._sample(int(sample), problems)
            images.append(image)
            labels.append(label)
            skipped.append("\n".join(problems))
        return {
            "sample": samples,
            "image": np.stack(images),
            "labels": np.stack(labels),
            "skipped": np.array(skipped, dtype=object),
        }


def load_validation_pairs(
    batch: dict[str, np.ndarray], short_side: int, max_long_side: int, storage_options: Mapping[str, Any] | None
) -> dict[str, np.ndarray]:
    """(image_uri, label_uri) -> the image resized for the model (as `load_images`) plus the label
    map at the original size (raw uint16 bytes); a pair that cannot be read gets an `error`."""
    out = load_images(batch, short_side, max_long_side, DEFAULT_MAX_PIXELS, storage_options)
    label_bytes, errors = [], list(out["error"])
    for i, uri in enumerate(batch["label_uri"]):
        if errors[i] is not None or not uri:  # unreadable image, or padding
            label_bytes.append(b"")
            continue
        try:
            labels = read_training_labels(_read(str(uri), storage_options))
            if labels.shape != (out["height"][i], out["width"][i]):
                raise ValueError(f"label map {labels.shape} and image {(out['height'][i], out['width'][i])} differ")
            label_bytes.append(labels.tobytes())
        except Exception as e:
            label_bytes.append(b"")
            errors[i] = f"cannot load label map {uri}: {type(e).__name__}: {e}"
    out["label_uri"] = np.array([str(u) for u in batch["label_uri"]], dtype=object)
    out["labels"] = np.array(label_bytes, dtype=object)
    out["error"] = np.array(errors, dtype=object)
    return out

"""The two per-batch stages of the labeling stream: load images (CPU tasks) and label them
(actors that each hold one SAN model). Both turn per-image failures into error rows."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import torch
from PIL import UnidentifiedImageError

from san_core.build import build_model, load_model
from san_core.hub import fetch_published_checkpoint
from san_core.model import SAN
from san_core.presets import get_preset
from schemas.output import LabelRow, label_row_schema

from .images import decode_rgb, resize_short_side
from .postprocess import encode_label_png, segments_from_label_map

log = logging.getLogger(__name__)


def _describe(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "UnidentifiedImageError: not an image format Pillow can read"
    return f"{type(error).__name__}: {error}".strip()


def load_images(
    batch: dict[str, np.ndarray],
    short_side: int,
    max_long_side: int,
    max_pixels: int,
    storage_options: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """image_uri -> the decoded image resized for the model, as raw RGB bytes plus sizes.

    A file that cannot be read or decoded gets an `error` and no pixels.
    """
    uris = [str(u) for u in batch["image_uri"]]
    pixels, heights, widths, input_h, input_w, errors = [], [], [], [], [], []
    for uri in uris:
        try:
            with fsspec.open(uri, "rb", **(storage_options or {})) as f:
                data = f.read()
            if not data:
                raise ValueError("file is empty (0 bytes)")
            rgb = decode_rgb(data, max_pixels)
            resized = resize_short_side(rgb, short_side, max_long_side)
            pixels.append(np.ascontiguousarray(resized).tobytes())
            heights.append(rgb.shape[0])
            widths.append(rgb.shape[1])
            input_h.append(resized.shape[0])
            input_w.append(resized.shape[1])
            errors.append(None)
        except Exception as e:  # every failure becomes this image's error row
            pixels.append(b"")
            heights.append(-1)
            widths.append(-1)
            input_h.append(0)
            input_w.append(0)
            errors.append(f"cannot load image: {_describe(e)}")
    return {
        "image_uri": np.array(uris, dtype=object),
        "pixels": np.array(pixels, dtype=object),
        "height": np.array(heights, dtype=np.int32),
        "width": np.array(widths, dtype=np.int32),
        "input_height": np.array(input_h, dtype=np.int32),
        "input_width": np.array(input_w, dtype=np.int32),
        "error": np.array(errors, dtype=object),
    }


@dataclass(frozen=True)
class WeightsSpec:
    """How an actor (or the driver) gets the model: a checkpoint URI, a preset's published file
    (fetched on each node into its own cache), or random smoke-test weights."""

    model_id: str
    checkpoint: str | None = None
    model_config_uri: str | None = None
    preset: str | None = None
    random: bool = False  # set only for the quick-start smoke test
    storage_options: Mapping[str, Any] | None = None

    def load(self, device: str = "cpu") -> tuple[SAN, str | None]:
        """The model and its checkpoint's sha256 (None for random weights)."""
        if self.random:
            torch.manual_seed(0)  # every actor builds the same random model
            return build_model(get_preset(self.model_id).config, device), None
        checkpoint = fetch_published_checkpoint(self.preset) if self.preset else self.checkpoint
        loaded = load_model(
            checkpoint=checkpoint,
            model_config=self.model_config_uri,
            storage_options=self.storage_options,
            device=device,
        )
        return loaded.model, loaded.checkpoint_digest


class SanLabeler:
    """Ray Data callable class: loads SAN once per actor, labels batches of loaded images."""

    def __init__(
        self,
        weights: WeightsSpec,
        vocabulary_ref: list,
        class_names: dict[int, str],
        model_id: str,
        checkpoint_digest: str | None,
        taxonomy_digest: str,
        use_gpu: bool,
        torch_threads: int,
    ) -> None:
        import ray

        torch.set_num_threads(max(1, torch_threads))
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model, _ = weights.load(self.device)
        self.vocabulary = ray.get(vocabulary_ref[0])  # the object-store copy, zero-copy numpy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only shared memory; never written
            self.embeddings = torch.from_numpy(self.vocabulary.embeddings).to(self.device)
        self.class_ids = torch.from_numpy(self.vocabulary.class_ids.astype(np.int64)).to(self.device)
        self.class_names = class_names
        self.row_fields = {
            "model_id": model_id,
            "checkpoint_digest": checkpoint_digest,
            "taxonomy_digest": taxonomy_digest,
        }

    def _label(
        self, pixels: list[bytes], input_sizes: list[tuple[int, int]], sizes: list[tuple[int, int]]
    ) -> list[dict]:
        """Label images in one call: the model batches those of equal padded size together."""
        images = [
            torch.from_numpy(np.frombuffer(p, dtype=np.uint8).reshape(*hw, 3).copy()).to(self.device).permute(2, 0, 1)
            for p, hw in zip(pixels, input_sizes, strict=True)
        ]
        results = self.model.predict_labels(
            [i.float() for i in images], self.embeddings, sizes, background=self.vocabulary.background
        )
        labeled = []
        for indices, scores in results:
            label_map = self.class_ids[indices].cpu().numpy().astype(np.uint16)  # distractors map to 0
            labeled.append(
                {
                    "label_map_png": encode_label_png(label_map),
                    "segments": segments_from_label_map(label_map, scores.float().cpu().numpy(), self.class_names),
                }
            )
        return labeled

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        count = len(batch["image_uri"])
        errors = [e if isinstance(e, str) and e else None for e in batch["error"]]  # all-null arrives as NaN
        results: list[dict[str, Any]] = [{"label_map_png": None, "segments": []} for _ in range(count)]
        valid = [i for i in range(count) if errors[i] is None]
        input_sizes = {i: (int(batch["input_height"][i]), int(batch["input_width"][i])) for i in valid}
        sizes = {i: (int(batch["height"][i]), int(batch["width"][i])) for i in valid}
        try:
            labeled = self._label(
                [batch["pixels"][i] for i in valid], [input_sizes[i] for i in valid], [sizes[i] for i in valid]
            )
            results_by_index = dict(zip(valid, labeled, strict=True))
        except Exception:  # find the culprit: one image at a time, so the others still get labels
            results_by_index = {}
            for i in valid:
                try:
                    results_by_index[i] = self._label([batch["pixels"][i]], [input_sizes[i]], [sizes[i]])[0]
                except Exception as e:  # e.g. out of memory on one huge image
                    log.exception("labeling %s failed", batch["image_uri"][i])
                    errors[i] = f"labeling failed: {_describe(e)}"
        for i, result in results_by_index.items():
            results[i] = result
        rows = []
        for i in range(count):
            height, width = int(batch["height"][i]), int(batch["width"][i])
            row = LabelRow(
                image_uri=str(batch["image_uri"][i]),
                width=width if height > 0 else None,
                height=height if height > 0 else None,
                error=errors[i],
                **results[i],
                **self.row_fields,
            )
            rows.append(row.model_dump())
        return pa.Table.from_pylist(rows, schema=label_row_schema())

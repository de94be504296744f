"""The labeling actor: a Ray Data callable class that holds one SAN model and turns batches of
loaded images (`pipeline.images.load_images`) into output rows; a failure becomes that image's
error row."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from schemas.output import LabelRow, Provenance, label_row_schema

from ..images import describe_error
from ..retries import PERMANENT
from .inference import HOST_THREADS, LabeledImage, label_images
from .progress import LabelingMetrics, peak_rss_mib

log = logging.getLogger(__name__)


def row_fields(labeled: LabeledImage) -> dict[str, Any]:
    """What an output row takes from a labeled image (or video frame)."""
    return {
        "label_map_png": labeled.label_map_png,
        "segments": labeled.segments,
        "mean_score": labeled.mean_score,
        "mean_margin": labeled.mean_margin,
        "uncertain_fraction": labeled.uncertain_fraction,
        "uncertainty_png": labeled.uncertainty_png,
    }


class SanLabeler:
    """Ray Data callable class: loads SAN once per actor, labels batches of loaded images."""

    def __init__(
        self,
        weights_ref: list,
        vocabulary_ref: list,
        class_names: dict[int, str],
        provenance: Provenance,
        run_id: str,
        use_gpu: bool,
        torch_threads: int,
        progress: Any = None,
        precision: str = "fp32",
        uncertainty_map: bool = False,
    ) -> None:
        import ray

        torch.set_num_threads(max(1, torch_threads))
        self.host_threads = max(HOST_THREADS, torch_threads)  # PNGs and segments beside the device
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model = ray.get(weights_ref[0]).build(self.device)  # the driver's copy, not the checkpoint
        self.vocabulary = ray.get(vocabulary_ref[0])  # the object-store copy, zero-copy numpy
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only shared memory; never written
            self.embeddings = torch.from_numpy(self.vocabulary.embeddings).to(self.device)
        self.class_ids = torch.from_numpy(self.vocabulary.class_ids.astype(np.int64)).to(self.device)
        self.class_names = class_names
        self.precision = precision  # fp32 or bf16, resolved by the driver
        self.uncertainty_map = uncertainty_map
        self.progress = progress  # a ProgressCounter actor, told of every batch
        self.metrics = LabelingMetrics(provenance.model_id)
        self.schema = label_row_schema(provenance, run_id)
        self.row_fields = {  # every row says which weights and taxonomy made it
            "model_id": provenance.model_id,
            "checkpoint_digest": provenance.weights_digest,
            "taxonomy_digest": provenance.taxonomy.digest,
        }

    def _label(
        self, pixels: list[bytes], input_sizes: list[tuple[int, int]], sizes: list[tuple[int, int]]
    ) -> list[dict]:
        """Label images in one call: the model batches those of equal padded size together."""
        images = [np.frombuffer(p, dtype=np.uint8).reshape(*hw, 3) for p, hw in zip(pixels, input_sizes, strict=True)]
        labeled = label_images(
            self.model,
            images,
            sizes,
            self.embeddings,
            self.class_ids,
            self.class_names,
            self.vocabulary.background,
            self.precision,
            self.host_threads,
            self.uncertainty_map,
        )
        return [row_fields(r) for r in labeled]

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        started = time.perf_counter()
        count = len(batch["image_uri"])
        errors = [e if isinstance(e, str) and e else None for e in batch["error"]]  # all-null arrives as NaN
        kinds = [k if isinstance(k, str) and k else None for k in batch["error_kind"]]
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
                    errors[i] = f"labeling failed: {describe_error(e)}"
                    kinds[i] = PERMANENT  # the same image fails the same way; --retry-errors all tries it again
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
                error_kind=kinds[i],
                **results[i],
                **self.row_fields,
            )
            rows.append(row.model_dump())
        failures = [(e, k) for e, k in zip(errors, kinds, strict=True) if e is not None]
        self.metrics.record(time.perf_counter() - started, count - len(failures), failures)
        if self.progress is not None:  # fire and forget: progress must never slow the labeling
            self.progress.add.remote(count, [e for e in errors if e is not None], peak_rss_mib())
        return pa.Table.from_pylist(rows, schema=self.schema)

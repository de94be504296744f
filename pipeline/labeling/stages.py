"""The labeling actor: a Ray Data callable class that holds one SAN model and turns batches of
loaded images (`pipeline.media.images.load_images`) into label maps and confidence sums on its device,
handed on as raw arrays (`encode.DEVICE_SCHEMA`) to the CPU tasks that encode them. A failure
becomes that image's error."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from ..media.images import describe_error
from ..retries import PERMANENT
from .actors import ActorSpec
from .encode import device_table, encode_labeled
from .inference import LabelMapArrays, label_maps
from .progress import LabelingMetrics, peak_rss_mib

log = logging.getLogger(__name__)


class SanLabeler:
    """Ray Data callable class: loads SAN once per actor, labels batches of loaded images on its
    device and, on a GPU, does nothing else (no PNG, no segments: the `encode.encode_rows` tasks
    after it do); given `encode`, as on CPUs, it encodes its rows itself."""

    def __init__(self, spec: ActorSpec, encode: dict[str, Any] | None = None) -> None:
        loaded = spec.load()
        self.device, self.model, self.vocabulary = loaded.device, loaded.model, loaded.vocabulary
        self.embeddings, self.class_ids = loaded.embeddings, loaded.class_ids
        self.precision = spec.precision
        self.uncertainty_map = spec.uncertainty_map
        self.progress = spec.progress
        self.metrics = LabelingMetrics(spec.provenance.model_id)
        # on CPUs the actor encodes its own rows (`encode.encode_rows`' arguments): a task of
        # its own there only takes turns on the same cores, at a cost per block
        self.encode = encode

    def _label(self, pixels: list[bytes], input_sizes: list[tuple[int, int]], sizes: list[tuple[int, int]]) -> list:
        """Label images in one call: the model batches those of equal padded size together."""
        images = [np.frombuffer(p, dtype=np.uint8).reshape(*hw, 3) for p, hw in zip(pixels, input_sizes, strict=True)]
        return label_maps(
            self.model,
            images,
            sizes,
            self.embeddings,
            self.class_ids,
            self.vocabulary.background,
            self.precision,
            self.uncertainty_map,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        started = time.perf_counter()
        count = len(batch["image_uri"])
        errors = [e if isinstance(e, str) and e else None for e in batch["error"]]  # all-null arrives as NaN
        kinds = [k if isinstance(k, str) and k else None for k in batch["error_kind"]]
        valid = [i for i in range(count) if errors[i] is None]
        input_sizes = {i: (int(batch["input_height"][i]), int(batch["input_width"][i])) for i in valid}
        sizes = {i: (int(batch["height"][i]), int(batch["width"][i])) for i in valid}
        labeled: dict[int, LabelMapArrays] = {}
        try:
            arrays = self._label(
                [batch["pixels"][i] for i in valid], [input_sizes[i] for i in valid], [sizes[i] for i in valid]
            )
            labeled = dict(zip(valid, arrays, strict=True))
        except Exception:  # find the culprit: one image at a time, so the others still get labels
            for i in valid:
                try:
                    labeled[i] = self._label([batch["pixels"][i]], [input_sizes[i]], [sizes[i]])[0]
                except Exception as e:  # e.g. out of memory on one huge image
                    log.exception("labeling %s failed", batch["image_uri"][i])
                    errors[i] = f"labeling failed: {describe_error(e)}"
                    kinds[i] = PERMANENT  # the same image fails the same way; --retry-errors all tries it again
        failures = [(e, k) for e, k in zip(errors, kinds, strict=True) if e is not None]
        self.metrics.record(time.perf_counter() - started, count - len(failures), failures)
        if self.progress is not None:  # fire and forget: progress must never slow the labeling
            self.progress.add.remote(count, [e for e in errors if e is not None], peak_rss_mib())
        if self.encode is not None:
            return encode_labeled(batch, errors, kinds, labeled, **self.encode)
        return device_table(batch, errors, kinds, labeled)

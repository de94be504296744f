"""The one codec for label maps: 2-D integer images of class ids or indices, stored as 8- or
16-bit PNG (or TIFF). The labeling job writes them; evaluation and fine-tuning read them."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

LABEL_MAP_EXTENSIONS = (".png", ".tif", ".tiff")


def encode_label_png(label_map: np.ndarray) -> bytes:
    """[H, W] class ids -> 16-bit greyscale PNG, encoded from the array's own memory (a
    100-megapixel map is 200 MB; `Image.fromarray` would copy it)."""
    values = np.ascontiguousarray(label_map.astype("<u2", copy=False))
    height, width = values.shape
    buffer = io.BytesIO()
    Image.frombuffer("I;16", (width, height), values, "raw", "I;16", 0, 1).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_label_map(data: bytes) -> np.ndarray:
    """A label-map file -> its values as stored, [H, W] uint8 or uint16 (never rescaled)."""
    with warnings.catch_warnings():  # maps as large as the images they label are expected
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            values = np.asarray(image)
    if values.ndim != 2:
        raise ValueError(f"a label map must have one channel, this one has shape {values.shape}")
    if values.dtype == np.uint8 or values.dtype == np.uint16:
        return values
    if values.min(initial=0) < 0 or values.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"label values must lie in 0..65535 (this map holds {values.dtype})")
    return values.astype(np.uint16)  # 16-bit PNGs may open as 32-bit ints

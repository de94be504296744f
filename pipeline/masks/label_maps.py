"""The one codec for label maps: 2-D integer images of class ids or indices, stored as 8- or
16-bit PNG (or TIFF). The labeling job writes them; evaluation and fine-tuning read them.

PNGs are written here rather than through Pillow: a label map is long runs of one value, and
Pillow tries all five PNG row filters on every row and deflates with zlib, 8-16 ms for a
1.2-megapixel map, more than decoding the photo. Every row is filtered with "Up" (the
difference to the row above: zero wherever a region goes on downwards) and deflated with ISA-L
(`isal`, zlib's format at several times its speed): 0.2-0.6 ms, for files 1.4-3 times the size
of Pillow's (`benchmarks/host_cost.py`). Any PNG reader reads them.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from typing import Any

import numpy as np
from isal import isal_zlib
from PIL import Image

LABEL_MAP_EXTENSIONS = (".png", ".tif", ".tiff")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2  # PNG filter type 2: each byte minus the byte above it
# ISA-L's level 1 (of 0-3): level 3 took 5 times as long for 0-3 % smaller label maps.
DEFLATE_LEVEL = 1
_BLOCK_BYTES = 1 << 22  # label-map bytes filtered and deflated at a time


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _check_greyscale(image: np.ndarray) -> None:
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16) or not image.size:
        raise ValueError(
            f"a greyscale PNG is made of [H, W] uint8 or uint16 with H, W > 0, not {image.dtype} {image.shape}"
        )


def filtered_rows(image: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """[H, W] uint8 or uint16 -> its PNG scanlines `start:stop` to deflate: each row's filter byte
    (Up), then its bytes (big-endian for 16 bits) minus the row above's, modulo 256.
    [stop - start, 1 + W * bytes] uint8."""
    _check_greyscale(image)
    stop = image.shape[0] if stop is None else min(stop, image.shape[0])
    first = max(0, start - 1)  # the row above the first, which the Up filter subtracts
    raw = np.ascontiguousarray(image[first:stop], dtype=">u2" if image.dtype == np.uint16 else np.uint8)
    raw = raw.view(np.uint8).reshape(stop - first, -1)
    rows = np.empty((stop - start, raw.shape[1] + 1), dtype=np.uint8)
    rows[:, 0] = _FILTER_UP
    if start == 0:
        rows[0, 1:] = raw[0]  # the first row's "above" is zeros
        np.subtract(raw[1:], raw[:-1], out=rows[1:, 1:])
    else:
        np.subtract(raw[1:], raw[:-1], out=rows[:, 1:])
    return rows


def deflated_rows(image: np.ndarray, compressor: Any) -> bytes:
    """The image's `filtered_rows` through a zlib-style `compressor` (`compressobj()`), a block of
    rows at a time: a 100-megapixel map needs a few MB beside itself, not two more copies."""
    block = max(1, _BLOCK_BYTES // max(1, image.shape[1] * image.dtype.itemsize))
    parts = [compressor.compress(filtered_rows(image, top, top + block)) for top in range(0, image.shape[0], block)]
    parts.append(compressor.flush())
    return b"".join(parts)


def png_file(image: np.ndarray, deflated: bytes) -> bytes:
    """A greyscale PNG of `image`'s size and depth around its `deflated_rows`."""
    height, width = image.shape
    header = struct.pack(">IIBBBBB", width, height, image.dtype.itemsize * 8, 0, 0, 0, 0)  # greyscale, no interlace
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", deflated) + _chunk(b"IEND", b"")


def encode_png(image: np.ndarray) -> bytes:
    """[H, W] uint8 or uint16 -> a greyscale PNG of the same bit depth (filter Up, ISA-L deflate)."""
    _check_greyscale(image)
    return png_file(image, deflated_rows(image, isal_zlib.compressobj(DEFLATE_LEVEL)))


def encode_label_png(label_map: np.ndarray) -> bytes:
    """[H, W] class ids -> 16-bit greyscale PNG."""
    narrow = label_map.dtype in (np.uint8, np.uint16)
    if not narrow and label_map.size and (label_map.min() < 0 or label_map.max() > np.iinfo(np.uint16).max):
        raise ValueError(f"label values must lie in 0..65535 to be stored in a 16-bit PNG ({label_map.dtype})")
    return encode_png(label_map.astype(np.uint16, copy=False))


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

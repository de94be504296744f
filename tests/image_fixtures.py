"""Real photographs (scikit-image ships them) and real broken files, for the labeling tests."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

GOOD_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def jpeg_bytes(rgb: np.ndarray, **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90, **save_args)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares huge dimensions: the pixel limit must reject it before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def write_image_set(directory: Path) -> dict[str, str | None]:
    """Writes good and broken images; returns file name -> expected error fragment (None = labels)."""
    directory.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}
    for name in GOOD_PHOTOS:
        (directory / f"{name}.jpg").write_bytes(jpeg_bytes(getattr(skimage.data, name)()))
        expected[f"{name}.jpg"] = None

    coffee = skimage.data.coffee()
    # EXIF orientation 6 (rotate 90 degrees clockwise): the stored 400x600 image is 600 tall once upright
    exif = Image.Exif()
    exif[0x0112] = 6
    (directory / "rotated_exif.jpg").write_bytes(jpeg_bytes(coffee, exif=exif.tobytes()))
    expected["rotated_exif.jpg"] = None

    cmyk = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).convert("CMYK").save(cmyk, format="JPEG")
    (directory / "cmyk.jpg").write_bytes(cmyk.getvalue())
    expected["cmyk.jpg"] = None

    gradient = (np.arange(120 * 160, dtype=np.uint32).reshape(120, 160) * 3).astype(np.uint16)
    Image.fromarray(gradient).save(directory / "sixteen_bit.png")
    expected["sixteen_bit.png"] = None

    full = jpeg_bytes(skimage.data.astronaut())
    (directory / "truncated.jpg").write_bytes(full[: len(full) // 2])
    expected["truncated.jpg"] = "truncated"
    (directory / "zero_bytes.jpg").write_bytes(b"")
    expected["zero_bytes.jpg"] = "empty (0 bytes)"
    (directory / "text_renamed.jpg").write_text("this is a text file, not a photograph\n")
    expected["text_renamed.jpg"] = "not an image in a format read here"
    (directory / "huge_dimensions.png").write_bytes(png_header_only(60_000, 60_000))
    expected["huge_dimensions.png"] = "pixel limit"
    return expected

"""Images in: the one list of image extensions, decode bytes to RGB, resize to the model's input
size, and `load_images`, the Ray Data stage that reads, decodes and resizes a batch of URIs."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np
from PIL import (  # the decoders of DECODER_FORMATS, registered with Pillow by importing them
    BmpImagePlugin,  # noqa: F401
    GifImagePlugin,  # noqa: F401
    Image,
    ImageOps,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    TiffImagePlugin,  # noqa: F401
    UnidentifiedImageError,
    WebPImagePlugin,  # noqa: F401
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# The only decoders a file reaches, whatever its name says. Pillow knows many more, some of which
# hand the file to other programs (PostScript/EPS to Ghostscript); none of those is ever tried.
# (The multi-picture JPEGs some cameras write open through the JPEG decoder.)
DECODER_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")

# Pillow's own bomb guard (~179 Mpx) raises on open; the pipeline sets its limit explicitly.
DEFAULT_MAX_PIXELS = 100_000_000


_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) with an allowed decoder; the pixel limit is checked before decoding."""
    try:
        image = Image.open(io.BytesIO(data), formats=DECODER_FORMATS)
    except Image.DecompressionBombError as e:  # Pillow's own guard fires at open for the largest
        raise ValueError(f"image is over the pixel limit ({e})") from None
    if image.width * image.height > max_pixels:
        image.close()
        raise ValueError(f"image is {image.width}x{image.height}, over the {max_pixels:,}-pixel limit")
    return image


def _upright_rgb(image: Image.Image) -> np.ndarray:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clip
        array = np.asarray(image, dtype=np.float32)
        peak = max(float(array.max()), 1.0)
        image = Image.fromarray((array / peak * 255.0).astype(np.uint8))
    return np.array(image.convert("RGB"))  # a writable copy


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """JPEG/PNG/... bytes -> uint8 RGB array [H, W, 3] at full size, EXIF orientation applied."""
    with _open(data, max_pixels) as image:
        return _upright_rgb(image)


def decode_for_model(
    data: bytes, short_side: int, max_long_side: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, tuple[int, int]]:
    """The image resized for the model (uint8 RGB) and its full upright (height, width).

    A JPEG at least twice the model's size is decoded straight at 1/2, 1/4 or 1/8 scale (Pillow's
    `draft`, in the DCT), never smaller than the model's size, then resized: a 12-megapixel photo
    never exists in memory at full size, and a small file declaring a huge JPEG costs little."""
    with _open(data, max_pixels) as image:
        rotated = image.getexif().get(0x0112, 1) in _ROTATED
        height, width = (image.width, image.height) if rotated else (image.height, image.width)
        new_h, new_w = short_side_size(height, width, short_side, max_long_side)
        if image.format == "JPEG":
            image.draft(None, (new_h, new_w) if rotated else (new_w, new_h))
        rgb = _upright_rgb(image)
    if rgb.shape[:2] != (new_h, new_w):
        rgb = np.array(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))
    return rgb, (height, width)


def short_side_size(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """Output (height, width) for the reference test resize: short side to `short_side`, the long
    side capped at `max_long_side` (detectron2's ResizeShortestEdge rounding)."""
    scale = short_side / min(height, width)
    if max(height, width) * scale > max_long_side:
        scale = max_long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_short_side(rgb: np.ndarray, short_side: int = 640, max_long_side: int = 2560) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> uint8 RGB resized bilinearly (as the reference evaluation does)."""
    height, width = rgb.shape[:2]
    new_h, new_w = short_side_size(height, width, short_side, max_long_side)
    if (new_h, new_w) == (height, width):
        return rgb
    return np.array(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR))


def describe_error(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):
        return f"UnidentifiedImageError: not an image in a format read here ({', '.join(DECODER_FORMATS)})"
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
            resized, (height, width) = decode_for_model(data, short_side, max_long_side, max_pixels)
            pixels.append(np.ascontiguousarray(resized).tobytes())
            heights.append(height)
            widths.append(width)
            input_h.append(resized.shape[0])
            input_w.append(resized.shape[1])
            errors.append(None)
        except Exception as e:  # every failure becomes this image's error row
            pixels.append(b"")
            heights.append(-1)
            widths.append(-1)
            input_h.append(0)
            input_w.append(0)
            errors.append(f"cannot load image: {describe_error(e)}")
    return {
        "image_uri": np.array(uris, dtype=object),
        "pixels": np.array(pixels, dtype=object),
        "height": np.array(heights, dtype=np.int32),
        "width": np.array(widths, dtype=np.int32),
        "input_height": np.array(input_h, dtype=np.int32),
        "input_width": np.array(input_w, dtype=np.int32),
        "error": np.array(errors, dtype=object),
    }

"""Images in: the one list of image extensions, decode bytes to RGB, resize to the model's input
size, and `load_images`, the Ray Data stage that reads, decodes and resizes a batch of URIs."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping
from typing import Any

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

from schemas.jobs import MAX_IMAGE_MIB, MAX_PIXELS

from ..retries import classify, read_bytes
from .integrity import CorruptImageError, check_jpeg, check_jpeg_fill, check_png

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# The only decoders a file reaches, whatever its name says. Pillow knows many more, some of which
# hand the file to other programs (PostScript/EPS to Ghostscript); none of those is ever tried.
# (The multi-picture JPEGs some cameras write open through the JPEG decoder.)
DECODER_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")

DEFAULT_MAX_PIXELS = MAX_PIXELS
DEFAULT_MAX_IMAGE_MIB = MAX_IMAGE_MIB

_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_TRANSPOSED = (2, 3, 4, 5, 6, 7, 8)  # EXIF orientations of an image stored flipped or turned
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")
# Bytes per pixel in Pillow's own storage (it pads 2- and 3-band modes to 4 bytes).
_STORAGE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
_RESIZED_AS_IS = ("RGB", "L")  # modes resized before conversion: the result is the same


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) with an allowed decoder; the pixel limit is checked before decoding,
    and the file's structure (`image_integrity`) before the decoder can paper over damage."""
    # Pillow refuses at open anything over twice its MAX_IMAGE_PIXELS (about 179 Mpx by default):
    # raised to the caller's limit, which is checked from the same header below.
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():  # Pillow's warning at half its limit: ours is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=DECODER_FORMATS)
    except Image.DecompressionBombError as e:  # Pillow's own guard fires at open for the largest
        # Pillow's message quotes its own limit (twice ours); say ours, and the size declared
        declared = re.search(r"\((\d+) pixels\)", str(e))
        size = f" ({int(declared.group(1)):,} pixels declared)" if declared else ""
        raise ValueError(f"image is over the {max_pixels:,}-pixel limit{size}") from None
    if image.width * image.height > max_pixels:
        image.close()
        raise ValueError(f"image is {image.width}x{image.height}, over the {max_pixels:,}-pixel limit")
    try:
        if image.format == "PNG":
            check_png(data)
        elif image.format == "JPEG":
            check_jpeg(data)
    except CorruptImageError:
        image.close()
        raise
    return image


def decode_memory_mib(image: Image.Image, rotated: bool) -> float:
    """What decoding `image` (opened, not loaded; after any `draft`) to RGB will hold at once."""
    pixels = image.width * image.height
    held = _STORAGE_BYTES.get(image.mode, 4)
    if image.mode in _SIXTEEN_BIT:
        held += 4 + 1  # float32 rescale, then 8 bits
    if image.mode == "1":
        held += 1  # the greyscale conversion
    elif image.mode not in _RESIZED_AS_IS:
        held += 4  # the RGB conversion
    if rotated:
        held += 4  # the upright copy
    return pixels * held / 2**20


def _check_memory(image: Image.Image, rotated: bool, max_image_mib: int) -> None:
    needed = decode_memory_mib(image, rotated)
    if needed > max_image_mib:
        raise ValueError(
            f"decoding this {image.width}x{image.height} {image.mode} image needs about {needed:,.0f} MiB, "
            f"over the {max_image_mib:,} MiB budget per image (--max-image-mib)"
        )


def _load_checked(image: Image.Image, declared_height: int) -> None:
    """Decode the pixels; a JPEG that ends in decoder fill is an error, not a picture."""
    image.load()
    if image.format == "JPEG":
        check_jpeg_fill(image, declared_height)


def _upright_rgb(image: Image.Image) -> Image.Image:
    """Loaded image in any allowed mode -> upright RGB (or L, for the caller to resize first)."""
    if image.getexif().get(0x0112, 1) in _TRANSPOSED:  # else exif_transpose copies the image as it is
        image = ImageOps.exif_transpose(image)
    if image.mode == "1":  # bilevel: resized as 8-bit greyscale, never as RGB at full size
        image = image.convert("L")
    if image.mode in _SIXTEEN_BIT:
        # 16-bit greyscale: scale to 8 bits rather than clip
        array = np.asarray(image, dtype=np.float32)
        peak = max(float(array.max()), 1.0)
        image = Image.fromarray((array / peak * 255.0).astype(np.uint8))
    return image if image.mode in _RESIZED_AS_IS else image.convert("RGB")


def _rgb_array(image: Image.Image) -> np.ndarray:
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))  # a writable copy


def decode_rgb(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_image_mib: int = DEFAULT_MAX_IMAGE_MIB
) -> np.ndarray:
    """JPEG/PNG/... bytes -> uint8 RGB array [H, W, 3] at full size, EXIF orientation applied."""
    with _open(data, max_pixels) as image:
        _check_memory(image, image.getexif().get(0x0112, 1) in _ROTATED, max_image_mib)
        _load_checked(image, image.height)
        return _rgb_array(_upright_rgb(image))


def decode_for_model(
    data: bytes,
    short_side: int,
    max_long_side: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_image_mib: int = DEFAULT_MAX_IMAGE_MIB,
) -> tuple[np.ndarray, tuple[int, int]]:
    """The image resized for the model (uint8 RGB) and its full upright (height, width).

    A JPEG at least twice the model's size is decoded straight at 1/2, 1/4 or 1/8 scale (Pillow's
    `draft`, in the DCT), never smaller than the model's size, then resized: a 12-megapixel photo
    never exists in memory at full size, and a small file declaring a huge JPEG costs little.
    RGB and greyscale images are resized before any conversion (the result is the same), so a
    large greyscale image is never held as RGB at full size."""
    with _open(data, max_pixels) as image:
        declared_height = image.height
        rotated = image.getexif().get(0x0112, 1) in _ROTATED
        height, width = (image.width, image.height) if rotated else (image.height, image.width)
        new_h, new_w = short_side_size(height, width, short_side, max_long_side)
        if image.format == "JPEG":
            image.draft(None, (new_h, new_w) if rotated else (new_w, new_h))
        _check_memory(image, rotated, max_image_mib)
        _load_checked(image, declared_height)
        upright = _upright_rgb(image)
        if upright.size != (new_w, new_h):
            upright = upright.resize((new_w, new_h), Image.BILINEAR)
        return _rgb_array(upright), (height, width)


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
    max_image_mib: int = DEFAULT_MAX_IMAGE_MIB,
    io_attempts: int = 4,
) -> dict[str, np.ndarray]:
    """image_uri -> the decoded image resized for the model, as raw RGB bytes plus sizes.

    Reading is retried through transient failures (`retries.read_bytes`). A file that cannot be
    read or decoded gets an `error`, and an `error_kind` saying whether trying again may help.
    """
    uris = [str(u) for u in batch["image_uri"]]
    pixels, heights, widths, input_h, input_w, errors, kinds = [], [], [], [], [], [], []
    for uri in uris:
        try:
            data = read_bytes(uri, storage_options, attempts=io_attempts)
            if not data:
                raise ValueError("file is empty (0 bytes)")
            resized, (height, width) = decode_for_model(data, short_side, max_long_side, max_pixels, max_image_mib)
            pixels.append(np.ascontiguousarray(resized).tobytes())
            heights.append(height)
            widths.append(width)
            input_h.append(resized.shape[0])
            input_w.append(resized.shape[1])
            errors.append(None)
            kinds.append(None)
        except Exception as e:  # every failure becomes this image's error row
            pixels.append(b"")
            heights.append(-1)
            widths.append(-1)
            input_h.append(0)
            input_w.append(0)
            errors.append(f"cannot load image: {describe_error(e)}")
            kinds.append(classify(e))
    return {
        "image_uri": np.array(uris, dtype=object),
        "pixels": np.array(pixels, dtype=object),
        "height": np.array(heights, dtype=np.int32),
        "width": np.array(widths, dtype=np.int32),
        "input_height": np.array(input_h, dtype=np.int32),
        "input_width": np.array(input_w, dtype=np.int32),
        "error": np.array(errors, dtype=object),
        "error_kind": np.array(kinds, dtype=object),
    }

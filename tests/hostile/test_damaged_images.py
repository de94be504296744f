"""Damaged files that a decoder would "repair" in silence: libjpeg fills missing JPEG data with
grey, Pillow's PNG reader ignores the image data's CRC and fills missing rows with black. Each
becomes an error row naming the damage; intact files of every kind still decode, and the memory
budget per image is checked from the header before any pixel is decoded."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import skimage.data
from PIL import Image

from pipeline.media.images import decode_for_model, decode_memory_mib, decode_rgb, load_images
from pipeline.media.integrity import CorruptImageError, check_jpeg, check_png

PHOTOS = {name: getattr(skimage.data, name)() for name in ("astronaut", "coffee", "chelsea", "camera")}


def _saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, rows: bytes, colour: int = 0, interlace: int = 0) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def _interlaced_grey_png(pixels: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit greyscale PNG written by hand (Pillow writes none)."""
    passes = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
    rows = b""
    for row0, col0, row_step, col_step in passes:
        sub = pixels[row0::row_step, col0::col_step]
        if sub.size:
            rows += b"".join(b"\x00" + row.tobytes() for row in sub)
    return _png(pixels.shape[1], pixels.shape[0], rows, interlace=1)


def _error_of(data: bytes, tmp_path, name: str) -> str | None:
    path = tmp_path / name
    path.write_bytes(data)
    out = load_images({"image_uri": np.array([str(path)], dtype=object)}, 64, 256, 10**9)
    return out["error"][0]


def test_a_small_jpeg_declaring_9000x9000_is_an_error_row_not_81_megapixels_of_grey(tmp_path):
    """The reported file: a 48x64 JPEG whose header was edited to say 9000x9000."""
    data = bytearray(_saved(Image.fromarray(PHOTOS["astronaut"]).resize((64, 48)), "JPEG", quality=90))
    frame = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, 9000, 9000)
    error = _error_of(bytes(data), tmp_path, "bomb.jpg")
    assert error is not None and "CorruptImageError: JPEG data ends early" in error, error
    assert "9000x9000" in error


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_cut_short_with_an_end_marker_is_an_error_row(tmp_path, progressive):
    """Data cut at half, then an end-of-image marker: libjpeg would fill the rest with grey."""
    full = _saved(Image.fromarray(PHOTOS["coffee"]), "JPEG", quality=90, progressive=progressive)
    if progressive:  # cut inside the first (DC) scan, so the bottom blocks have no data at all
        first_scan = full.find(b"\xff\xda")
        cut = first_scan + (full.find(b"\xff\xda", first_scan + 2) - first_scan) // 2
    else:
        cut = len(full) // 2
    error = _error_of(full[:cut] + b"\xff\xd9", tmp_path, "cut.jpg")
    assert error is not None and "CorruptImageError: JPEG data" in error, error


def test_a_jpeg_cut_short_without_an_end_marker_is_an_error_row(tmp_path):
    full = _saved(Image.fromarray(PHOTOS["chelsea"]), "JPEG", quality=90)
    error = _error_of(full[: len(full) // 3], tmp_path, "truncated.jpg")
    assert error is not None and "truncated" in error, error


def test_a_png_whose_data_fails_its_crc_is_an_error_row(tmp_path):
    data = bytearray(_saved(Image.fromarray(PHOTOS["astronaut"]), "PNG"))
    first_data = data.find(b"IDAT")
    length = struct.unpack(">I", data[first_data - 4 : first_data])[0]
    data[first_data + 4 + length] ^= 0xFF  # the chunk's CRC no longer matches its bytes
    error = _error_of(bytes(data), tmp_path, "crc.png")
    assert error is not None and "CorruptImageError: PNG IDAT chunk" in error and "bad CRC" in error, error


def test_a_png_missing_rows_is_an_error_row(tmp_path):
    """A valid zlib stream holding half the rows, then IEND: Pillow would show black below."""
    rows = b"".join(b"\x00" + bytes([y]) * 64 for y in range(32))
    error = _error_of(_png(64, 64, rows), tmp_path, "short.png")
    assert error is not None and "PNG image data ends early" in error and "4,160" in error, error


def test_an_interlaced_png_is_checked_by_its_seven_passes():
    pixels = (np.arange(37 * 29) % 251).astype(np.uint8).reshape(37, 29)
    whole = _interlaced_grey_png(pixels)
    check_png(whole)
    assert (decode_rgb(whole)[..., 0] == pixels).all()
    body_start = whole.find(b"IDAT") + 4
    (length,) = struct.unpack(">I", whole[body_start - 8 : body_start - 4])
    rows = zlib.decompress(whole[body_start : body_start + length])
    with pytest.raises(CorruptImageError, match="ends early"):
        check_png(_png(29, 37, rows[:-10], interlace=1))


@pytest.mark.parametrize("name", sorted(PHOTOS))
@pytest.mark.parametrize(
    "options",
    [
        {"quality": 90},
        {"quality": 95, "progressive": True},
        {"quality": 75, "optimize": True},
        {"quality": 90, "subsampling": 0},
        {"quality": 90, "restart_marker_blocks": 4},
    ],
    ids=["baseline", "progressive", "optimized", "444", "restarts"],
)
def test_intact_jpegs_pass_every_check(name, options):
    data = _saved(Image.fromarray(PHOTOS[name]), "JPEG", **options)
    check_jpeg(data)
    assert decode_rgb(data).shape[:2] == PHOTOS[name].shape[:2]
    assert decode_for_model(data, 64, 256)[0].shape[2] == 3


@pytest.mark.parametrize("colour", [(90, 140, 230), (128, 128, 128)])
def test_a_flat_colour_jpeg_is_not_taken_for_damage(colour):
    """A flat image needs few bits per block: the scan-length bound is a true lower bound. One
    that is the fill grey all over is a placeholder someone drew, not missing data."""
    data = _saved(Image.new("RGB", (3000, 2000), colour), "JPEG", quality=50, optimize=True)
    check_jpeg(data)
    assert decode_for_model(data, 640, 2560)[0].shape == (640, 960, 3)
    assert decode_rgb(data).shape == (2000, 3000, 3)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16"])
def test_intact_pngs_of_every_mode_pass(mode):
    photo = Image.fromarray(PHOTOS["astronaut"])
    image = photo.convert("I").point(lambda v: v * 250).convert("I;16") if mode == "I;16" else photo.convert(mode)
    data = _saved(image, "PNG")
    check_png(data)
    assert decode_rgb(data).shape == (512, 512, 3)


def test_greyscale_is_resized_before_conversion_with_the_same_result():
    """The loader resizes greyscale in one band (a third of the memory); the pixels are the same."""
    data = _saved(Image.fromarray(PHOTOS["camera"]), "PNG")
    resized, _ = decode_for_model(data, 200, 800)
    expected = np.array(Image.fromarray(PHOTOS["camera"]).convert("RGB").resize((200, 200), Image.BILINEAR))
    assert (resized == expected).all()


def test_the_memory_budget_is_checked_from_the_header(tmp_path):
    data = _saved(Image.fromarray(PHOTOS["coffee"]).convert("P"), "PNG")  # 400x600 palette: 5 B/px
    with Image.open(io.BytesIO(data)) as image:
        needed = decode_memory_mib(image, rotated=False)
    assert needed == pytest.approx(400 * 600 * 5 / 2**20)
    path = tmp_path / "palette.png"
    path.write_bytes(data)
    uris = np.array([str(path)], dtype=object)
    refused = load_images({"image_uri": uris}, 64, 256, 10**9, max_image_mib=1)
    assert "needs about 1 MiB, over the 1 MiB budget per image (--max-image-mib)" in refused["error"][0]
    allowed = load_images({"image_uri": uris}, 64, 256, 10**9, max_image_mib=2)
    assert allowed["error"][0] is None


def test_the_memory_budget_counts_a_jpeg_at_its_reduced_decoding_scale():
    """A 9000x9000 JPEG would need 309 MiB at full size; decoded at 1/8 it needs under 5."""
    data = _saved(Image.new("RGB", (9000, 9000), (90, 140, 230)), "JPEG", quality=50)
    rgb, size = decode_for_model(data, 640, 2560, max_image_mib=8)
    assert size == (9000, 9000) and rgb.shape == (640, 640, 3)
    with pytest.raises(ValueError, match="--max-image-mib"):
        decode_rgb(data, max_image_mib=8)


def test_a_pixel_limit_above_pillows_own_is_honoured(monkeypatch):
    """Aerial users raise --max-pixels past Pillow's built-in refusal (about 179 Mpx)."""
    from image_fixtures import png_header_only

    header_only = png_header_only(20_000, 10_000)  # 200 Mpx declared, no data
    with pytest.raises(ValueError, match="pixel limit"):
        decode_rgb(header_only)
    # as in a fresh process (the limit is raised for good by the first larger --max-pixels)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000_000)
    with pytest.raises(ValueError) as refused:  # past Pillow's own guard (200 Mpx): our limit is named
        decode_rgb(png_header_only(30_000, 10_000), max_pixels=100_000_000)
    assert str(refused.value) == "image is over the 100,000,000-pixel limit (300,000,000 pixels declared)"
    with pytest.raises(CorruptImageError, match="PNG image data ends early"):  # past both limits
        decode_rgb(header_only, max_pixels=300_000_000)

"""Image files that name themselves .jpg but are something else reach no decoder outside the
allowlist: PostScript (Pillow would run Ghostscript on it), PDF, and formats nobody asked for."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.media.images import DECODER_FORMATS, decode_rgb, describe_error, load_images

POSTSCRIPT = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 64 64
/Helvetica findfont 12 scalefont setfont 10 10 moveto (hello) show showpage
"""


def _saved(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("postscript", POSTSCRIPT),
        ("pdf", _saved(Image.new("RGB", (32, 32), "red"), "PDF")),
        ("ico", _saved(Image.new("RGB", (32, 32), "red"), "ICO")),
        ("tga", _saved(Image.new("RGB", (32, 32), "red"), "TGA")),
    ],
)
def test_formats_outside_the_allowlist_are_refused_before_decoding(name, data):
    with pytest.raises(Exception) as info:
        decode_rgb(data)
    message = describe_error(info.value)
    assert "not an image in a format read here" in message and "JPEG" in message, message
    assert "Ghostscript" not in message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
def test_every_allowed_format_decodes(fmt):
    rgb = (np.arange(24 * 32 * 3) % 251).astype(np.uint8).reshape(24, 32, 3)
    assert fmt in DECODER_FORMATS
    decoded = decode_rgb(_saved(Image.fromarray(rgb).convert("P") if fmt == "GIF" else Image.fromarray(rgb), fmt))
    assert decoded.shape == (24, 32, 3) and decoded.dtype == np.uint8


def test_a_postscript_file_named_jpg_becomes_an_error_row(tmp_path):
    (tmp_path / "x.jpg").write_bytes(POSTSCRIPT)
    (tmp_path / "ok.png").write_bytes(_saved(Image.new("RGB", (40, 30), "blue"), "PNG"))
    uris = np.array([str(tmp_path / "x.jpg"), str(tmp_path / "ok.png")], dtype=object)
    out = load_images({"image_uri": uris}, short_side=32, max_long_side=128, max_pixels=10**6)
    assert "not an image in a format read here" in out["error"][0]
    assert out["error"][1] is None and out["height"][1] == 30


MEASURE = """
import sys
from pathlib import Path
from pipeline.media.images import decode_for_model, decode_rgb

def high_water_mib():  # VmHWM is this process's own peak (ru_maxrss would carry the parent's over exec)
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) // 1024

data = Path(sys.argv[1]).read_bytes()
before = high_water_mib()
result = decode_for_model(data, 640, 2560) if sys.argv[2] == "model" else decode_rgb(data)
print(high_water_mib() - before)
"""


def _peak_mib(path, how: str) -> int:
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), how], cwd=repo, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def test_a_huge_jpeg_is_decoded_at_reduced_scale_in_little_memory(tmp_path):
    """A small file declaring 9000x9000 (81 Mpx, 243 MB as RGB) costs a fraction of that."""
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (9000, 9000), (90, 140, 230)).save(path, quality=50)
    assert path.stat().st_size < 2_000_000
    full, reduced = _peak_mib(path, "full"), _peak_mib(path, "model")
    assert full > 200 and reduced < full / 4, (full, reduced)


def test_reduced_scale_decoding_matches_a_full_decode_and_resize(tmp_path):
    import skimage.data

    from pipeline.media.images import decode_for_model, resize_short_side

    photo = np.array(Image.fromarray(skimage.data.astronaut()).resize((2400, 1800), Image.BICUBIC))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, upright portrait
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    resized, size = decode_for_model(buffer.getvalue(), 640, 2560)
    reference = resize_short_side(decode_rgb(buffer.getvalue()), 640, 2560)
    assert size == (2400, 1800) and resized.shape == reference.shape == (853, 640, 3)
    assert np.abs(resized.astype(int) - reference.astype(int)).mean() < 3.0

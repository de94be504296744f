"""Is the file whole? Checks for the damage that Pillow's decoders repair silently.

Pillow raises on a file cut short, but not on every kind of damage: libjpeg fills with grey the
blocks whose data is missing when the data ends in a marker (an early end-of-image), and Pillow's
PNG reader neither checks the CRC of the image data nor that the compressed rows are all there
(missing rows come back black). Each check here reads only the file's structure, in time linear
in its size, and raises `CorruptImageError` naming what is wrong; the labeling job turns that into
the image's error row instead of labeling decoder fill as if it were a photograph.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

# libjpeg's fill for missing data: all-zero DCT coefficients, which decode to mid-grey.
JPEG_FILL_VALUE = 128
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7 passes: (first row, first column, row step, column step)
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
_INFLATE_STEP = 1 << 20  # bytes of rows inflated at a time while counting them


class CorruptImageError(ValueError):
    """The file is an image, but damaged: what a decoder would show is partly made up."""


def check_png(data: bytes) -> None:
    """Every chunk's CRC, and that the compressed image data holds every row the header declares."""
    if not data.startswith(_PNG_SIGNATURE):
        return  # not a PNG; its decoder is not reached
    position, header, compressed = len(_PNG_SIGNATURE), None, []
    while position < len(data):
        if position + 8 > len(data):
            raise CorruptImageError("PNG file ends inside a chunk header")
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        end = position + 12 + length
        if end > len(data):
            raise CorruptImageError(f"PNG file ends inside its {kind.decode('latin-1')} chunk")
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(kind + body) != crc:
            raise CorruptImageError(f"PNG {kind.decode('latin-1')} chunk at byte {position} has a bad CRC")
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
        position = end
    if header is None or len(header) < 13:
        raise CorruptImageError("PNG file has no valid IHDR chunk")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header[:13])
    expected = _png_raw_size(width, height, depth * _PNG_CHANNELS.get(colour, 4), interlace == 1)
    inflated, finished = _inflated_size(compressed, limit=expected)
    if inflated < expected or not finished:
        raise CorruptImageError(
            f"PNG image data ends early: {inflated:,} of the {expected:,} bytes of rows that "
            f"{width}x{height} pixels need (the rest would decode as black)"
        )


def _png_raw_size(width: int, height: int, bits_per_pixel: int, interlaced: bool) -> int:
    """Bytes of filtered rows (one filter byte per row) that the header's image needs."""
    passes = _ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for row0, col0, row_step, col_step in passes:
        rows = max(0, math.ceil((height - row0) / row_step))
        cols = max(0, math.ceil((width - col0) / col_step))
        if rows and cols:
            total += rows * (1 + math.ceil(cols * bits_per_pixel / 8))
    return total


def _inflated_size(pieces: list[bytes], limit: int) -> tuple[int, bool]:
    """Bytes the zlib stream inflates to (counted up to `limit`, never held) and whether it ended."""
    inflater, total = zlib.decompressobj(), 0
    try:
        for piece in pieces:
            pending = piece
            while pending and total <= limit and not inflater.eof:
                total += len(inflater.decompress(pending, _INFLATE_STEP))
                pending = inflater.unconsumed_tail
            if total > limit or inflater.eof:
                break
        while total <= limit and not inflater.eof:  # flush what zlib still holds
            out = inflater.decompress(b"", _INFLATE_STEP)
            if not out:
                break
            total += len(out)
    except zlib.error as e:
        raise CorruptImageError(f"PNG image data is not a valid zlib stream ({e})") from None
    return total, inflater.eof or total > limit


@dataclass
class _Component:
    h: int
    v: int


@dataclass
class _JpegFrame:
    width: int = 0
    height: int = 0
    progressive: bool = False
    components: dict[int, _Component] = field(default_factory=dict)

    @property
    def max_h(self) -> int:
        return max(c.h for c in self.components.values())

    @property
    def max_v(self) -> int:
        return max(c.v for c in self.components.values())

    def blocks(self, scan: list[int]) -> dict[int, int]:
        """8x8 blocks each component of a scan codes (ITU T.81 A.2)."""
        if len(scan) == 1:  # non-interleaved: the component's own blocks
            c = self.components[scan[0]]
            cols = math.ceil(math.ceil(self.width * c.h / self.max_h) / 8)
            rows = math.ceil(math.ceil(self.height * c.v / self.max_v) / 8)
            return {scan[0]: cols * rows}
        mcus = math.ceil(self.width / (8 * self.max_h)) * math.ceil(self.height / (8 * self.max_v))
        return {i: mcus * self.components[i].h * self.components[i].v for i in scan}


def check_jpeg(data: bytes) -> None:
    """Each Huffman-coded scan holds at least the bits its blocks need.

    Every block of a sequential scan codes a DC symbol and at least one AC symbol (an end-of-block
    if nothing else), and every block of a progressive DC scan a DC symbol; none is shorter than
    its table's shortest code. A file whose scan is shorter than that lower bound cannot hold the
    image its header declares: libjpeg would fill the rest with grey. (Damage that leaves more
    bytes than the bound is caught after decoding by `check_jpeg_fill`.)
    """
    if not data.startswith(b"\xff\xd8"):
        return
    frame, shortest_code, position = _JpegFrame(), {}, 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return  # not at a marker: leave the verdict to the decoder
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        if marker == 0xD9:
            return
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        body = data[position + 4 : position + 2 + length]
        position += 2 + length
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frame = _parse_frame(marker, body)
            if frame is None:
                return  # lossless, hierarchical or arithmetic coding: no bound applies
        elif marker == 0xC4:
            shortest_code.update(_shortest_codes(body))
        elif marker == 0xDA:
            scan_end = _scan_end(data, position)
            _check_scan(frame, shortest_code, body, scan_bytes=scan_end - position)
            position = scan_end


def _parse_frame(marker: int, body: bytes) -> _JpegFrame | None:
    if marker not in (0xC0, 0xC1, 0xC2) or len(body) < 6:
        return None
    height, width, count = struct.unpack(">HHB", body[1:6])
    components = {}
    for i in range(count):
        ident, sampling = body[6 + 3 * i], body[7 + 3 * i]
        components[ident] = _Component(h=max(1, sampling >> 4), v=max(1, sampling & 15))
    if height == 0 or width == 0 or not components:
        return None  # height set later by a DNL marker: rare, and left to the decoder
    return _JpegFrame(width=width, height=height, progressive=marker == 0xC2, components=components)


def _shortest_codes(body: bytes) -> dict[tuple[int, int], int]:
    """(class, table id) -> length in bits of the table's shortest Huffman code."""
    tables, offset = {}, 0
    while offset + 17 <= len(body):
        klass, ident = body[offset] >> 4, body[offset] & 15
        counts = body[offset + 1 : offset + 17]
        tables[(klass, ident)] = next((n + 1 for n, c in enumerate(counts) if c), 16)
        offset += 17 + sum(counts)
    return tables


def _scan_end(data: bytes, position: int) -> int:
    """Index of the first marker after entropy-coded data (stuffed 0xFF00 and restarts skipped)."""
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return len(data)
        following = data[position + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            position += 1 if following == 0xFF else 2
            continue
        return position


def _check_scan(frame: _JpegFrame, shortest_code: dict, header: bytes, scan_bytes: int) -> None:
    if not frame.components or not header:
        return
    count = header[0]
    selectors = [(header[1 + 2 * i], header[2 + 2 * i]) for i in range(count)]
    spectral_start, approximation_high = header[1 + 2 * count], header[3 + 2 * count] >> 4
    if any(ident not in frame.components for ident, _ in selectors):
        return
    blocks = frame.blocks([ident for ident, _ in selectors])
    bits = 0
    for ident, tables in selectors:
        dc_bits = shortest_code.get((0, tables >> 4), 1)
        ac_bits = shortest_code.get((1, tables & 15), 1)
        if not frame.progressive:
            bits += blocks[ident] * (dc_bits + ac_bits)
        elif spectral_start == 0:  # progressive DC scan: a symbol per block, or a bit when refining
            bits += blocks[ident] * (dc_bits if approximation_high == 0 else 1)
    if scan_bytes * 8 < bits:
        raise CorruptImageError(
            f"JPEG data ends early: the header declares {frame.width}x{frame.height} pixels, whose "
            f"blocks need at least {math.ceil(bits / 8):,} bytes of scan data, but the file holds "
            f"{scan_bytes:,} (a decoder would fill the rest with grey)"
        )


def check_jpeg_fill(image: Image.Image, declared_height: int) -> None:
    """After decoding: an exact mid-grey band across the whole bottom row of blocks.

    libjpeg fills every block after the point where data went missing with zero coefficients,
    which decode to exactly (128, 128, 128); the fill always reaches the last row of blocks. A
    photograph never ends in a band of exactly that value a full block row tall: its blocks
    carry quantisation noise. An image that is that grey all over is taken as drawn so (a
    placeholder); one whose data is missing entirely fails `check_jpeg`'s scan-length bound. A
    synthetic image with other content above a flat mid-grey bottom would be refused; that is
    the price of never labeling decoder fill.
    """
    if image.mode not in ("RGB", "L") or image.height == 0:
        return
    sampling = max((s[1] for s in _sampling(image)), default=1)
    rows = max(1, math.ceil(8 * sampling * image.height / max(1, declared_height)))
    band = np.asarray(image.crop((0, image.height - min(rows, image.height), image.width, image.height)))
    fill_band = band.size and bool((band == JPEG_FILL_VALUE).all())
    if fill_band and not bool((np.asarray(image) == JPEG_FILL_VALUE).all()):
        raise CorruptImageError(
            "JPEG data is incomplete: the image ends in the flat grey a decoder fills missing data "
            f"with (the bottom {rows} rows, at least, are exactly {JPEG_FILL_VALUE})"
        )


def _sampling(image: Image.Image) -> list[tuple[int, int]]:
    """(horizontal, vertical) sampling factors of the JPEG's components, from Pillow's header."""
    layers = getattr(image, "layer", None) or []
    return [(h, v) for _, h, v, _ in layers]

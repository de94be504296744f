"""Label Studio's brush masks, both ways: `brush_rle` encodes (tested against Label Studio's own
codec), `brush_mask` decodes.

Label Studio's brush RLE (the rle-pack format of thi.ng/umbrella) packs the mask as an RGBA
image, row-major, every channel 255 inside the mask and 0 outside: a header (value count in 32
bits, word size - 1 in 5 bits, four run-length field widths - 1 in 4 bits each), then per run a
1 bit, the index of a field width in 2 bits, the run length - 1 in that many bits, the value in
8 bits.
"""

from __future__ import annotations

import numpy as np

RUN_FIELD_BITS = (3, 4, 8, 16)  # the field widths Label Studio's own encoder uses


def brush_rle(mask: np.ndarray) -> list[int]:
    """A 2-D bool mask as Label Studio's brush RLE (a list of byte values)."""
    values = mask.ravel().astype(np.uint8) * 255
    changes = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate(([0], changes))
    lengths = np.diff(np.append(starts, values.size)) * 4  # four channels per pixel
    bits = [f"{values.size * 4:032b}", f"{8 - 1:05b}", "".join(f"{b - 1:04b}" for b in RUN_FIELD_BITS)]
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        value = f"{int(values[start]):08b}"
        while length > 0:
            run = min(length, 1 << RUN_FIELD_BITS[-1])
            field = next(i for i, width in enumerate(RUN_FIELD_BITS) if run <= 1 << width)
            bits.append(f"1{field:02b}{run - 1:0{RUN_FIELD_BITS[field]}b}{value}")
            length -= run
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[i : i + 8], 2) for i in range(0, len(stream), 8)]


def brush_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """Label Studio's brush RLE (see `pipeline.exports.label_studio`) as a bool mask (its alpha).
    ValueError unless it is one of exactly `height` x `width` pixels: its header is checked before
    anything of its size is made, and a stream that ends early or runs on is refused."""
    if not isinstance(rle, list) or len(rle) > 2 * height * width + 16:  # the encoder's worst case: 14 bits a pixel
        found = f"{len(rle):,} values" if isinstance(rle, list) else type(rle).__name__
        raise ValueError(f"a brush RLE of {found} for {width}x{height} pixels")
    values = np.asarray(rle)
    if values.size < 7 or values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255:
        raise ValueError("a brush RLE is a list of byte values (0-255) with a 7-byte header")
    bits = np.unpackbits(values.astype(np.uint8))
    position = 0

    def read(count: int) -> int:
        nonlocal position
        value = 0
        for bit in bits[position : position + count]:
            value = (value << 1) | int(bit)
        position += count
        return value

    total = read(32)
    word = read(5) + 1
    fields = [read(4) + 1 for _ in range(4)]
    if total != height * width * 4 or word > 8:
        raise ValueError(f"a brush RLE of {total:,} {word}-bit values, not the {height * width * 4:,} bytes of "
                         f"{width}x{height} RGBA")  # fmt: skip
    out = np.zeros(total, dtype=np.uint8)
    i = 0
    while i < total:
        if position >= bits.size:
            raise ValueError(f"a brush RLE that ends after {i:,} of its {total:,} values")
        repeat = read(1)
        end = i + 1 + read(fields[read(2)])
        if end > total:
            raise ValueError(f"a brush RLE whose runs go past its {total:,} values")
        if repeat:
            out[i:end] = read(word)
        else:
            for k in range(i, end):
                out[k] = read(word)
        i = end
    return out.reshape(height, width, 4)[:, :, 3] > 0

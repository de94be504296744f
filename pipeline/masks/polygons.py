"""Polygons from label masks, for the annotation tools that edit outlines rather than pixels.

Each connected part of a mask becomes one polygon: scikit-image traces its outline at the 0.5
level between pixel centres (`find_contours`), and Douglas-Peucker simplification
(`approximate_polygon`) keeps the vertices that matter within `tolerance` pixels. Coordinates are
COCO's: x right, y down, in pixel edges (the top-left pixel covers [0, 1] x [0, 1]).

A polygon cannot hold a hole. A part with holes (a donut, a window in a wall) is traced by its
outer outline and reported as such, so an exporter can keep that segment as a mask (RLE) instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours


@dataclass
class MaskPolygons:
    """The outlines of one mask: one flat [x1, y1, x2, y2, ...] list per connected part."""

    polygons: list[list[float]] = field(default_factory=list)
    has_holes: bool = False  # some part has a hole, which these outlines leave out


def mask_polygons(mask: np.ndarray, tolerance: float = 1.0) -> MaskPolygons:
    """mask: [H, W] bool -> the outline of each 8-connected part, simplified within `tolerance`
    pixels (0 keeps every traced vertex)."""
    parts, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    result = MaskPolygons()
    for index, box in enumerate(ndimage.find_objects(parts), start=1):
        if box is None:
            continue
        part = parts[box] == index
        filled = ndimage.binary_fill_holes(part)
        result.has_holes |= bool((filled != part).any())
        # padded, so that a part touching the border is traced as a closed outline
        outlines = find_contours(np.pad(filled, 1).astype(np.float32), 0.5)
        outline = max(outlines, key=len)  # the outer outline (holes are filled)
        if tolerance > 0:
            outline = approximate_polygon(outline, tolerance)
        if len(outline) > 1 and np.array_equal(outline[0], outline[-1]):
            outline = outline[:-1]  # COCO polygons close themselves
        if len(outline) < 3:
            continue
        top, left = box[0].start, box[1].start
        # contour (row, col) of the padded part -> pixel-edge x, y of the image
        xs = outline[:, 1] - 1 + left + 0.5
        ys = outline[:, 0] - 1 + top + 0.5
        result.polygons.append([round(float(v), 2) for pair in zip(xs, ys, strict=True) for v in pair])
    return result

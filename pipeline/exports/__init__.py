"""Exports of a labeling output for annotation tools (`coco`: COCO JSON with RLE segmentations)."""

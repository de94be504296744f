"""Exports of a labeling output for annotation tools, each read through the labels folder's store:
COCO JSON with RLE or polygon segmentations (`coco`), Label Studio tasks with predictions
(`label_studio`), plain label PNGs (`png`), VSPW's video layout (`vspw`), and how they name
what they write (`names`)."""

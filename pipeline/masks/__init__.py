"""Mask codecs, one home: the label-map PNG (`label_maps`), COCO RLE (`coco_rle`), Label Studio's
brush RLE (`brush`) and polygons traced from masks (`polygons`)."""

"""Label maps at full resolution in bounded memory: the tiles of `semantic_label_tiles` are the
argmax of the reference's full score maps (847 classes, sizes that need padding), and the
segments found in one pass over the map are those pycocotools gives for each class's mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as coco_mask

from pipeline.labeling.inference import label_images
from pipeline.labeling.segments import class_rles, label_runs, score_sums, segments_from_label_map
from pipeline.masks.label_maps import decode_label_map
from san_core.build import load_model
from san_core.postprocess import (
    BOUND_SLACK,
    PRUNING_BLOCK,
    batched_label_maps,
    class_probabilities,
    composite_resize_bands,
    composite_resize_matrix,
    resize_columns,
    resize_matrix,
    semantic_label_tiles,
    semantic_labels,
    semantic_scores,
    tile_blocks,
    top_two,
)


@pytest.fixture(scope="module")
def tiny(parity_dir):
    tiny_dir = parity_dir / "tiny_a"
    return load_model(checkpoint=str(tiny_dir / "checkpoint.pth"), model_config=str(tiny_dir / "config.json")).model


def _blobs(height: int, width: int, classes: int, seed: int) -> np.ndarray:
    """A label map of smooth regions, like a segmentation's, with ids 0..classes-1."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes, size=(max(1, height // 7), max(1, width // 5)))
    rows = np.minimum(np.arange(height) * coarse.shape[0] // height, coarse.shape[0] - 1)
    cols = np.minimum(np.arange(width) * coarse.shape[1] // width, coarse.shape[1] - 1)
    return coarse[rows][:, cols].astype(np.uint16)


@pytest.mark.parametrize(("height", "width", "block"), [(37, 53, 1 << 23), (37, 53, 40), (64, 1, 3), (1, 90, 7)])
def test_runs_of_all_classes_in_one_pass_equal_pycocotools_per_class(height, width, block):
    label_map = _blobs(height, width, classes=6, seed=height * width)
    label_map[-1, -1] = 9  # a class found only in the last pixel
    values, lengths = label_runs(label_map, block_pixels=block)
    assert lengths.sum() == height * width and (values[1:] != values[:-1]).all()
    assert (np.repeat(values, lengths) == label_map.T.ravel()).all()
    rles = class_rles(label_map)
    assert sorted(rles) == np.unique(label_map).tolist()
    for class_id, rle in rles.items():
        expected = coco_mask.encode(np.asfortranarray((label_map == class_id).astype(np.uint8)))
        assert rle["counts"] == expected["counts"] and list(rle["size"]) == list(expected["size"])


def test_segments_carry_area_bbox_and_mean_raw_score():
    label_map = _blobs(40, 60, classes=4, seed=1)
    scores = np.random.default_rng(2).random((40, 60)).astype(np.float32)
    names = {i: f"class {i}" for i in range(4)}
    segments = segments_from_label_map(label_map, score_sums(label_map, scores), names)
    assert [s.class_id for s in segments] == [i for i in range(1, 4) if (label_map == i).any()]
    for segment in segments:
        mask = label_map == segment.class_id
        assert segment.area == mask.sum() and segment.class_name == f"class {segment.class_id}"
        ys, xs = np.nonzero(mask)
        assert segment.bbox == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert segment.raw_score == pytest.approx(float(scores[mask].mean()), rel=1e-6)


@pytest.mark.parametrize(
    ("classes", "padded", "valid", "output", "chunk", "sharpness"),
    [
        (847, (48, 64), (48, 64), (96, 128), 1 << 25, 3),  # ADE-847, one tile
        (847, (48, 64), (41, 57), (123, 171), 5000, 3),  # padding cropped, many row and column tiles
        (847, (48, 64), (41, 57), (123, 171), 5000, 30),  # peaked class probabilities: pruning prunes
        (847, (48, 64), (41, 57), (123, 171), 5000, 0.1),  # nearly flat: candidates' scores in pixel chunks
        (847, (64, 96), (61, 90), (123, 171), 200000, 2),  # blocks drop some of the tiles' candidates
        (150, (32, 48), (30, 45), (301, 451), 20000, 3),
        (5, (16, 16), (13, 9), (7, 5), 10, 3),  # output smaller than the input, tiny tiles
        (1, (16, 16), (16, 16), (16, 16), 1 << 25, 3),  # one class: no rival
    ],
)
def test_label_tiles_are_the_argmax_of_the_full_score_maps(classes, padded, valid, output, chunk, sharpness):
    generator = torch.Generator().manual_seed(classes + output[0] + round(sharpness))
    queries = 20
    class_logits = torch.randn(queries, classes + 1, generator=generator) * sharpness
    mask_logits = torch.randn(queries, padded[0] // 4, padded[1] // 4, generator=generator) * 4
    scores = semantic_scores(class_logits, mask_logits, padded, valid, output)
    best, index = scores.max(dim=0)
    labels = torch.full(output, -1, dtype=torch.int64)
    tiles = list(semantic_label_tiles(class_logits, mask_logits, padded, valid, output, max_chunk_elements=chunk))
    for tile in tiles:
        rows, cols = tile.labels.shape
        assert (labels[tile.top : tile.top + rows, tile.left : tile.left + cols] == -1).all()  # no overlap
        labels[tile.top : tile.top + rows, tile.left : tile.left + cols] = tile.labels
        assert torch.allclose(tile.scores, best[tile.top : tile.top + rows, tile.left : tile.left + cols], atol=1e-6)
        window = scores[:, tile.top : tile.top + rows, tile.left : tile.left + cols]
        second = window.topk(2, dim=0).values[1] if classes > 1 else torch.zeros_like(tile.scores)
        assert torch.allclose(tile.runner_up, second, atol=1e-6)  # the margin's rival, exact
        # every class's score summed (the posterior's normaliser), from the queries alone
        assert torch.allclose(tile.totals, window.sum(dim=0), rtol=1e-5, atol=1e-6)
    assert (labels >= 0).all()  # every pixel covered
    if chunk < 1 << 25 and classes > 1:
        assert len(tiles) > 1
    # identical up to exact float ties between classes
    disagree = labels != index
    if disagree.any():
        tie = scores.gather(0, labels[None])[0] - best
        assert tie[disagree].abs().max() <= 1e-6
    assembled, _ = semantic_labels(class_logits, mask_logits, padded, valid, output, max_chunk_elements=chunk)
    assert (assembled == labels).all()


def test_column_resize_is_pixel_major_and_equals_interpolation_along_the_columns():
    logits = torch.randn(5, 3, 7)  # [Q, h, w]
    half = resize_columns(logits, resize_matrix(7, 11).float())  # [h, W * Q]
    assert half.shape == (3, 11 * 5) and half.is_contiguous()
    # the rows keep their size (an identity resize), the columns go from 7 to 11
    expected = torch.nn.functional.interpolate(logits[None], size=(3, 11), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(half.view(3, 11, 5).permute(2, 0, 1), expected, atol=1e-6)


def test_block_bounds_hold_at_every_pixel_and_keep_fewer_classes_than_the_tiles():
    """The pruning test per block: each block's ceilings bound every pixel's masks there, every
    class that is first or second at some pixel is kept, and fewer classes than the whole tile's
    one bound keeps."""
    generator = torch.Generator().manual_seed(7)
    queries, classes, grid, padded, valid, output = 20, 847, (16, 24), (64, 96), (61, 90), (123, 171)
    probs = class_probabilities(torch.randn(queries, classes + 1, generator=generator) * 2, background=True)
    mask_logits = torch.randn(queries, *grid, generator=generator) * 4
    a_y = composite_resize_matrix(grid[0], padded[0], valid[0], output[0]).float()
    a_x = composite_resize_matrix(grid[1], padded[1], valid[1], output[1]).float()
    band_first, band_end = composite_resize_bands(grid[0], padded[0], valid[0], output[0])
    half = torch.einsum("qhw,xw->hxq", mask_logits, a_x).reshape(grid[0], output[1] * queries)
    top, bottom = 10, 101  # a tile whose rows do not start or end on a block's
    masks = (a_y[top:bottom] @ half).view(-1, queries).sigmoid()  # [pixels, Q]
    blocks = tile_blocks(half, band_first, band_end, top, bottom, output[1], queries)

    rows, cols = torch.meshgrid(torch.arange(bottom - top), torch.arange(output[1]), indexing="ij")
    column_blocks = -(-output[1] // PRUNING_BLOCK)
    block_of_pixel = (rows // PRUNING_BLOCK * column_blocks + cols // PRUNING_BLOCK).flatten()
    assert blocks.ceilings.shape == (-(-(bottom - top) // PRUNING_BLOCK) * column_blocks, queries)
    assert (masks <= blocks.ceilings[block_of_pixel]).all()

    scores = masks @ probs
    ranked = scores.topk(2, dim=1)
    second = ranked.values[:, 1]
    kept = blocks.reaching(torch.arange(classes), probs, second)
    assert torch.isin(torch.unique(ranked.indices), kept).all()
    # exactly the classes whose bound reaches, in some block, the lowest second-best score there
    floors = torch.full((len(blocks.ceilings),), torch.inf).scatter_reduce(0, block_of_pixel, second, "amin")
    reaches = (blocks.ceilings @ probs >= floors[:, None] - BOUND_SLACK).any(dim=0)
    assert torch.equal(kept, torch.nonzero(reaches).squeeze(1))
    tile_ceiling = half[min(band_first[top:bottom]) : max(band_end[top:bottom])].view(-1, queries).amax(dim=0)
    kept_by_the_tile = (tile_ceiling.sigmoid() @ probs >= second.min()).sum()
    assert len(kept) < kept_by_the_tile


def test_the_job_path_equals_the_argmax_of_the_models_score_maps(tiny, tiny_inputs):
    vocabulary = tiny_inputs["vocabulary"]
    embeddings = tiny.class_embeddings(vocabulary)
    class_ids = torch.arange(1, len(vocabulary) + 1)  # taxonomy ids 1..C
    names = {i + 1: name for i, name in enumerate(vocabulary)}
    images = [(np.random.default_rng(i).random((45 + 7 * i, 61, 3)) * 255).astype(np.uint8) for i in range(2)]
    sizes = [(90, 122), (413, 300)]
    labeled = label_images(tiny, images, sizes, embeddings, class_ids, names)
    for image, size, result in zip(images, sizes, labeled, strict=True):
        (scores,) = tiny.predict([torch.from_numpy(image).permute(2, 0, 1).float()], embeddings, [size])
        best, index = scores.max(dim=0)
        expected = (index + 1).numpy().astype(np.uint16)
        label_map = decode_label_map(result.label_map_png)
        assert label_map.shape == size and (label_map == expected).all()
        assert [s.class_id for s in result.segments] == np.unique(expected).tolist()
        for segment in result.segments:
            mask = expected == segment.class_id
            assert segment.area == mask.sum()
            assert segment.raw_score == pytest.approx(float(best.numpy()[mask].mean()), rel=1e-5)
            posterior = (best / scores.sum(dim=0)).numpy()
            assert segment.confidence == pytest.approx(float(posterior[mask].mean()), abs=1e-5)


def test_top_two_matches_topk_and_breaks_ties_as_argmax():
    generator = torch.Generator().manual_seed(5)
    for columns in (2, 8, 10, 16, 847):
        scores = torch.rand(5000, columns, generator=generator)
        scores[:100, 1] = scores[:100, 0]  # equal scores somewhere in the row
        scores[100:200, 0] = scores[100:200, 1:].max(dim=1).values  # a tie for the first place
        scores[200:300, :2] = -1.0
        expected_values = scores.topk(2, dim=1).values
        expected_index = scores.argmax(dim=1)
        best, index, second = top_two(scores.clone())
        assert torch.equal(best, expected_values[:, 0]) and torch.equal(second, expected_values[:, 1])
        assert torch.equal(index, expected_index)  # the first of equal bests
        assert torch.equal(second[100:200], best[100:200])  # a tie for the first place leaves no margin
        assert (index[100:200] == 0).all()
    best, index, second = top_two(torch.tensor([[0.3], [0.7]]))
    assert best.tolist() == pytest.approx([0.3, 0.7]) and index.tolist() == [0, 0] and second.tolist() == [0, 0]


@pytest.mark.parametrize(
    ("classes", "peak", "chunk"),
    [(847, 1.0, None), (847, 0.01, 5000), (150, 5.0, 5000), (40, 0.1, None), (1, 1.0, None)],
)
def test_batched_label_maps_are_the_argmax_of_each_images_score_maps(classes, peak, chunk):
    """A GPU's label maps, a batch of one size at a time: the argmax of the full score maps and
    the top-two scores, as image by image and tile by tile. Flat class probabilities (peak 0.01)
    leave the anchors undecided, so classes outside them are scored too."""
    generator = torch.Generator().manual_seed(classes)
    batch, queries, padded, valid, output = 3, 12, (96, 128), (90, 121), (151, 203)
    class_logits = torch.randn(batch, queries, classes + 1, generator=generator) * peak
    mask_logits = torch.randn(batch, queries, 6, 8, generator=generator) * 3
    labels = batched_label_maps(class_logits, mask_logits, padded, valid, output, True, chunk)
    assert labels.labels.shape == labels.scores.shape == labels.runner_up.shape == (batch, *output)
    for image in range(batch):
        scores = semantic_scores(class_logits[image], mask_logits[image], padded, valid, output)
        ranked = scores.topk(min(2, classes), dim=0)
        assert torch.allclose(labels.scores[image], ranked.values[0], atol=1e-6)
        second = ranked.values[1] if classes > 1 else torch.zeros(output)
        assert torch.allclose(labels.runner_up[image], second, atol=1e-6)
        # every class's score summed, without scoring every class: the posterior's normaliser
        assert torch.allclose(labels.totals[image], scores.sum(dim=0), rtol=1e-5, atol=1e-6)
        # the argmax, up to float ties between classes (flat probabilities make a few)
        disagree = labels.labels[image] != scores.argmax(dim=0)
        assert disagree.float().mean() < 1e-3
        tie = scores.gather(0, labels.labels[image][None])[0] - ranked.values[0]
        assert (tie[disagree].abs() <= 1e-6).all()
        tiles, _ = semantic_labels(class_logits[image], mask_logits[image], padded, valid, output, True, chunk)
        assert (labels.labels[image] != tiles).float().mean() < 1e-3

"""The journal version's video inference: every stage matches the published video code
(tests/fixtures/parity/tiny_video_a, within 1e-4; labels and masks exactly), and on clips of other
shapes it composes the image path's parts as the algorithm says."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from jobs.verify import main as verify_main
from san_core.build import load_model
from san_core.postprocess import resize_matrix
from san_core.verify import PARITY_TOLERANCE, run_video_parity
from san_core.video import clip_labels, cluster_queries, frame_label_tiles, frame_scores, resize_taps
from schemas.model_config import SanModelConfig


@pytest.fixture(scope="module")
def tiny_model(parity_dir):
    tiny = parity_dir / "tiny_video_a"
    return load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json")).model


def test_every_stage_of_both_reference_clips_matches(parity_dir):
    results = run_video_parity(parity_dir / "tiny_video_a")
    stages = ("queries", "cluster_centers", "mask_preds", "attn_bias", "class_logits", "sem_seg")
    for video in (0, 1):
        names = {r.name for r in results if r.name.startswith(f"video[{video}].")}
        assert {f"video[{video}].{stage}" for stage in stages} <= names
        assert f"video[{video}].pred_masks (exact)" in names and f"video[{video}].sem_seg (end to end)" in names
    worst = max(results, key=lambda r: r.max_abs_diff)
    assert worst.max_abs_diff <= PARITY_TOLERANCE, worst


def test_verify_video_exits_non_zero_on_any_mismatch(parity_dir, tmp_path, capsys):
    assert verify_main(["video", str(parity_dir / "tiny_video_a")]) == 0
    assert "20/20 tensors within" in capsys.readouterr().out
    broken = tmp_path / "broken"
    shutil.copytree(parity_dir / "tiny_video_a", broken)
    expected = torch.load(broken / "expected.pth", weights_only=True)
    expected["videos"][1]["class_logits"][0, 0] += 0.01
    expected["videos"][0]["pred_labels"] = [2]
    torch.save(expected, broken / "expected.pth")
    assert verify_main(["video", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "video[1].class_logits" in out and "FAIL" in out and "18/20 tensors" in out


def _frames(count: int, height: int, width: int, seed: int = 0) -> list[torch.Tensor]:
    """A panning clip: one random image seen through a window that moves a few pixels a frame."""
    g = torch.Generator().manual_seed(seed)
    scene = torch.rand(3, height + 4 * count, width + 4 * count, generator=g) * 255
    return [scene[:, 3 * i : 3 * i + height, 4 * i : 4 * i + width].contiguous() for i in range(count)]


def test_one_frame_with_a_cluster_per_query_is_the_image_path(tiny_model):
    """k-means with as many clusters as tokens returns the tokens themselves: the clip's proposals
    are then the image's queries (in another order), and at the frames' own size the score maps
    equal the image path's."""
    frames = _frames(1, 70, 90)
    embeddings = tiny_model.class_embeddings(["sky", "tree", "road", "person", "car", "building", "water"])
    video = tiny_model.predict_video(frames, embeddings)
    image = tiny_model.predict(frames, embeddings)[0]
    assert video.score_maps.shape == (1, 7, 70, 90)
    assert torch.allclose(video.score_maps[0], image, atol=1e-5, rtol=0)
    # the centres are the frame's own query tokens
    tokens = video.outputs.queries[0]
    distance = torch.cdist(video.outputs.cluster_centers.double(), tokens.double())
    assert distance.min(dim=1).values.max() < 1e-5


def test_a_still_clip_judges_like_one_frame(tiny_model):
    """Three identical frames: the same proposals, frame-averaged classes equal one frame's."""
    (frame,) = _frames(1, 64, 64, seed=3)
    embeddings = tiny_model.class_embeddings(["sky", "tree", "road"])
    one = tiny_model.predict_video([frame], embeddings)
    still = tiny_model.predict_video([frame] * 3, embeddings, cluster_centers=one.outputs.cluster_centers)
    assert torch.allclose(still.outputs.class_logits, one.outputs.class_logits, atol=1e-5)
    for i in range(3):
        assert torch.allclose(still.score_maps[i], one.score_maps[0], atol=1e-5)
    assert still.clip.labels == one.clip.labels
    assert still.clip.scores == pytest.approx(one.clip.scores, abs=1e-6)


def test_other_shapes_and_cluster_counts(tiny_model, parity_dir):
    """Five frames of 75x110 (padded to 96x128), five clusters for eight queries, output at 150x220:
    proposal k is one proposal in every frame, and the classes are the frames' mean."""
    config = SanModelConfig.from_json_file(parity_dir / "tiny_video_a" / "config.json")
    assert config.num_clusters == 8
    five = config.model_copy(update={"video": config.video.model_copy(update={"num_clusters": 5})})
    assert five.num_clusters == 5 and five.digest() != config.digest()
    frames = _frames(5, 75, 110, seed=1)
    embeddings = tiny_model.class_embeddings(["sky", "tree", "road", "person"])
    queries = tiny_model.forward_video(frames, embeddings).queries
    centres = cluster_queries(queries, 5)
    assert centres.shape == (5, queries.shape[-1])
    out = tiny_model.forward_video(frames, embeddings, cluster_centers=centres)
    assert out.padded_size == (96, 128) and out.input_size == (75, 110)
    assert out.mask_logits.shape == (5, 5, 6, 8) and out.attn_biases[-1].shape == (5, 2, 5, 6, 8)
    per_frame = tiny_model.text_classifier.class_logits(
        tiny_model.recognition_head(
            *_clip_tokens(tiny_model, frames), out.attn_biases
        ), embeddings, True
    )  # fmt: skip
    assert torch.allclose(out.class_logits, per_frame.mean(0), atol=1e-5)
    prediction = tiny_model.predict_video(frames, embeddings, (150, 220), cluster_centers=centres)
    assert prediction.score_maps.shape == (5, 4, 150, 220)
    assert prediction.clip.masks.shape == (len(prediction.clip.labels), 5, 150, 220)
    union = prediction.clip.masks.any(dim=0)
    assert bool(union.all()) and int(prediction.clip.masks.sum()) == 5 * 150 * 220  # each pixel one label


def _clip_tokens(model, frames):
    batch = model.preprocess(frames)
    clip_input = torch.nn.functional.interpolate(batch, scale_factor=0.5, mode="bilinear", align_corners=False)
    features = model.clip_features(clip_input)
    last = model.config.san.clip_feature_last_layer
    return features.cls_tokens[last], features.maps[last]


def test_clip_labels_score_a_label_over_the_frames():
    scores = torch.zeros(2, 3, 2, 2)
    scores[0, 1] = torch.tensor([[0.9, 0.8], [0.1, 0.1]])  # class 1 wins the top row of frame 0
    scores[0, 2] = torch.tensor([[0.0, 0.0], [0.6, 0.4]])
    scores[1, 1] = 0.7  # and all of frame 1
    labels = clip_labels(scores)
    assert labels.labels == [1, 2]
    assert labels.scores[0] == pytest.approx(((0.9 + 0.8) / 2 + 0.7) / 2)
    assert math.isnan(labels.scores[1])  # absent from frame 1: NaN, as the reference computes it
    assert labels.masks.shape == (2, 2, 2, 2) and labels.masks[0, 1].all() and labels.masks[1, 0, 1].all()


def test_frames_of_mixed_sizes_are_cropped_to_the_first_as_the_reference_does(tiny_model):
    embeddings = tiny_model.class_embeddings(["sky", "tree"])
    first, second = _frames(1, 64, 64)[0], _frames(1, 70, 80, seed=2)[0]
    prediction = tiny_model.predict_video([first, second], embeddings)
    assert prediction.outputs.padded_size == (96, 96) and prediction.outputs.input_size == (64, 64)
    assert prediction.score_maps.shape == (2, 2, 64, 64)
    with pytest.raises(ValueError, match="too short"):
        cluster_queries(torch.zeros(1, 8, 4), 9)


@pytest.mark.parametrize(("size_in", "size_out"), [(8, 8), (6, 12), (12, 5), (1, 4)])
def test_resize_taps_are_the_resize_and_name_neighbouring_rows(size_in, size_out):
    """Two taps per output give PyTorch's resize weights; a tap of weight 0 (an output on an input
    position) names its neighbour's row, so a tile reads only the frame rows around its own."""
    first, second, first_weight, second_weight = resize_taps(size_in, size_out)
    rows = torch.arange(size_out)
    dense = torch.zeros(size_out, size_in, dtype=torch.float64)
    dense[rows, first] += first_weight
    dense[rows, second] += second_weight
    assert torch.allclose(dense, resize_matrix(size_in, size_out))
    assert bool(((second - first).abs() <= 1).all())


@pytest.mark.parametrize(
    ("classes", "output_size", "chunk", "sharpness"),
    [
        (847, (123, 171), 5000, 30),  # peaked class probabilities: the anchors answer most tiles
        (847, (123, 171), 5000, 0.1),  # nearly flat: the candidates' scores come in pixel chunks
        (847, (41, 57), 1 << 25, 3),  # one tile, at the frame's own size
        (150, (30, 40), 2000, 3),  # smaller than the frame
        (1, (50, 60), 1 << 25, 3),  # one class: no rival
    ],
)
def test_frame_label_tiles_prune_classes_exactly(classes, output_size, chunk, sharpness):
    """With a large vocabulary most classes are never scored, and the labels, scores and runners-up
    are still those of the full score maps."""
    generator = torch.Generator().manual_seed(classes + output_size[0] + round(sharpness))
    clusters, padded, frame = 12, (48, 64), (41, 57)
    class_probs = (torch.randn(clusters, classes + 1, generator=generator) * sharpness).softmax(-1)[:, :-1]
    mask_logits = torch.randn(clusters, padded[0] // 4, padded[1] // 4, generator=generator) * 4
    scores = frame_scores(class_probs, mask_logits, padded, frame, output_size)
    best, index = scores.max(dim=0)
    second = scores.topk(2, dim=0).values[1] if classes > 1 else torch.zeros_like(best)
    labels = torch.full(output_size, -1, dtype=torch.int64)
    tiles = list(frame_label_tiles(class_probs, mask_logits, padded, frame, output_size, max_chunk_elements=chunk))
    for tile in tiles:
        rows, cols = tile.labels.shape
        window = (slice(tile.top, tile.top + rows), slice(tile.left, tile.left + cols))
        assert (labels[window] == -1).all()  # no overlap
        labels[window] = tile.labels
        assert torch.allclose(tile.scores, best[window], atol=1e-6)
        assert torch.allclose(tile.runner_up, second[window], atol=1e-6)
    assert bool((labels >= 0).all()) and (len(tiles) > 1 or chunk == 1 << 25)
    disagree = labels != index
    if disagree.any():  # only exact float ties between classes
        assert (scores.gather(0, labels[None])[0] - best)[disagree].abs().max() <= 1e-6


def _assembled(tiles, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A frame's label tiles put together: labels (-1 where no tile fell), scores, tile count."""
    labels = torch.full(size, -1, dtype=torch.int64)
    best = torch.zeros(size)
    count = 0
    for tile in tiles:
        rows, cols = tile.labels.shape
        labels[tile.top : tile.top + rows, tile.left : tile.left + cols] = tile.labels
        best[tile.top : tile.top + rows, tile.left : tile.left + cols] = tile.scores
        count += 1
    return labels, best, count


@pytest.mark.parametrize("output_size", [(75, 110), (150, 221), (40, 57)])
def test_label_tiles_are_the_argmax_of_the_score_maps(tiny_model, output_size):
    """Tiles small enough that a frame takes many: the labels equal the full score maps' argmax."""
    frames = _frames(3, 75, 110, seed=4)
    embeddings = tiny_model.class_embeddings(["sky", "tree", "road", "person", "car"])
    full = tiny_model.predict_video(frames, embeddings, output_size)
    out, per_frame = tiny_model.predict_video_label_tiles(frames, embeddings, output_size, max_chunk_elements=3000)
    assert torch.equal(out.cluster_centers, full.outputs.cluster_centers)  # one k-means, the same seed
    for scores, tiles in zip(full.score_maps, per_frame, strict=True):
        labels, best, count = _assembled(tiles, output_size)
        assert count > 1 and bool((labels >= 0).all())
        top2 = scores.topk(2, dim=0).values
        decided = (top2[0] - top2[1]) > 1e-5  # pixels without a near tie
        assert torch.equal(labels[decided], scores.argmax(0)[decided])
        assert torch.allclose(best, scores.max(0).values, atol=1e-5)


def test_a_decoded_clip_is_labeled_at_the_video_size(tiny_model):
    """A real panning video, decoded with PyAV, resized for the model, labeled at its own size."""
    import io

    import numpy as np
    import skimage.data
    from PIL import Image
    from video_fixtures import camera_frames, encode

    from pipeline.labeling.video_inference import label_clip
    from pipeline.masks.label_maps import decode_label_map
    from pipeline.media.video import VideoReader

    video = encode(camera_frames(skimage.data.astronaut(), 6, (120, 160)), "mp4")
    with VideoReader(io.BytesIO(video), "pan.mp4") as reader:
        frames = [f.rgb for f in reader.frames()]
    small = [np.asarray(Image.fromarray(f).resize((80, 60), Image.BILINEAR)) for f in frames]
    names = ["sky", "person", "rocket", "flag"]
    embeddings = tiny_model.class_embeddings(names)
    class_ids = torch.tensor([3, 7, 9, 12])  # taxonomy ids, not indices
    class_names = dict(zip([3, 7, 9, 12], names, strict=True))
    labeled = label_clip(tiny_model, small, (120, 160), embeddings, class_ids, class_names)
    assert len(labeled) == 6
    tensors = [torch.from_numpy(f).permute(2, 0, 1).float() for f in small]
    expected = tiny_model.predict_video(tensors, embeddings, (120, 160))
    for frame, scores in zip(labeled, expected.score_maps, strict=True):
        label_map = decode_label_map(frame.label_map_png)
        assert label_map.shape == (120, 160)
        top2 = scores.topk(2, dim=0).values
        decided = ((top2[0] - top2[1]) > 1e-5).numpy()
        assert np.array_equal(label_map[decided], class_ids[scores.argmax(0)].numpy()[decided])
        assert sum(s.area for s in frame.segments) == 120 * 160
        assert {s.class_id for s in frame.segments} <= {3, 7, 9, 12}


def test_bf16_clip_labels_agree_with_fp32_where_fp32_is_sure(tiny_model):
    """The video path under bf16 (the networks in autocast with the weights cast once; k-means,
    class averaging and label maps in fp32) labels as fp32 does wherever fp32 is sure."""
    frames = _frames(3, 75, 110, seed=4)
    embeddings = tiny_model.class_embeddings(["sky", "tree", "road", "person", "car"])
    full = tiny_model.predict_video(frames, embeddings)
    out, per_frame = tiny_model.predict_video_label_tiles(frames, embeddings, precision="bf16")
    assert out.mask_logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in tiny_model.parameters())  # the bf16 copies were handed back
    sure = agreeing = 0
    for scores, tiles in zip(full.score_maps, per_frame, strict=True):
        labels, _, _ = _assembled(tiles, tuple(scores.shape[1:]))
        top2 = scores.topk(2, dim=0).values
        confident = (top2[0] - top2[1]) >= 0.01 * top2[0]
        sure += int(confident.sum())
        agreeing += int((labels == scores.argmax(0))[confident].sum())
    assert sure > 0.5 * 3 * 75 * 110
    assert agreeing / sure >= 0.995, agreeing / sure

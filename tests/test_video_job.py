"""Videos in `san label` end to end on a real local Ray: real videos encoded with PyAV from
photographs with camera motion beside real images, broken videos beside whole ones, Parquet read
back with pyarrow and DuckDB, incremental runs and retries, previews and the VSPW export."""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import skimage.data
import torch
from PIL import Image
from pycocotools.coco import COCO
from video_fixtures import audio_only, camera_frames, encode

from jobs.export import main as export_main
from jobs.label import main as label_main
from pipeline.labeling.inference import label_images
from pipeline.labeling.video import clip_rows
from pipeline.labeling.video_inference import label_clip
from pipeline.masks.label_maps import decode_label_map
from pipeline.media.clips import ModelClip, read_clips
from pipeline.media.video import Clip, Damage, VideoReader
from pipeline.store import LabelStore
from pipeline.vocabulary import load_or_build_vocabulary
from san_core.build import load_model
from schemas.output import frame_uri
from schemas.taxonomy import load_taxonomy

pytestmark = pytest.mark.usefixtures("ray_session")

TAXONOMY = """\
name: test-video
version: 1
templates: vild
classes:
  - {id: 2, name: person}
  - {id: 5, name: cat}
  - {id: 8, name: sky}
"""
FPS = 10
FRAMES = 30  # 3 s at 10 fps
SIZE = (72, 96)  # height, width of the encoded frames
VFR_TIMES = [0.0, 0.04, 0.08, 0.12, 0.16, 0.5, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25, 1.7, 2.3]


def _damaged_in_the_middle(data: bytes) -> bytes:
    """Zero 600 bytes in the middle of the file: a few packets there no longer decode."""
    damaged = bytearray(data)
    start = len(data) // 2
    damaged[start : start + 600] = bytes(600)
    return bytes(damaged)


@pytest.fixture(scope="module")
def video_run(ray_session, tmp_path_factory, tiny_weights):
    root = tmp_path_factory.mktemp("video-job")
    inputs = root / "inputs"
    inputs.mkdir()
    astronaut, coffee = skimage.data.astronaut(), skimage.data.coffee()
    (inputs / "pan.mp4").write_bytes(encode(camera_frames(astronaut, FRAMES, SIZE, "pan"), "mp4", fps=FPS))
    (inputs / "zoom.webm").write_bytes(encode(camera_frames(coffee, FRAMES, SIZE, "zoom"), "webm", fps=FPS))
    # a phone video: stored landscape, displayed portrait
    (inputs / "phone.mov").write_bytes(encode(camera_frames(coffee, 12, SIZE, "pan"), "mov", fps=FPS, rotation=90))
    mkv = encode(camera_frames(astronaut, FRAMES, SIZE, "zoom"), "mkv", fps=FPS)
    (inputs / "cut.mkv").write_bytes(mkv[: len(mkv) * 2 // 3])  # frames up to the cut, then nothing
    mp4 = encode(camera_frames(astronaut, FRAMES, SIZE, "pan"), "mp4", fps=FPS)
    (inputs / "cut.mp4").write_bytes(mp4[: len(mp4) * 2 // 3])  # its index sits at the end: unreadable
    (inputs / "damaged.mp4").write_bytes(_damaged_in_the_middle(mp4))
    (inputs / "notes.avi").write_bytes(b"these are meeting notes, not a video\n" * 50)
    (inputs / "podcast.mkv").write_bytes(audio_only())
    # variable frame rate: bursts of fast frames between slow ones
    (inputs / "vfr.mkv").write_bytes(encode(camera_frames(coffee, len(VFR_TIMES), SIZE), "mkv", times=VFR_TIMES))
    Image.fromarray(astronaut).save(inputs / "still.jpg", quality=90)
    vocab = root / "taxonomy.yaml"
    vocab.write_text(TAXONOMY)
    output = root / "out"
    args = ["--vocab", str(vocab), "--input", str(inputs), "--output", str(output)]
    args += ["--vocab-cache", str(root / "cache"), "--fps", "5", "--clip-length", "4", "--max-error-ratio", "1"]
    args += ["--preview", "3", *tiny_weights]
    rc = label_main(args)
    return {"rc": rc, "inputs": inputs, "output": output, "args": args, "vocab": vocab}


def _by_source(output: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in LabelStore(str(output)).rows():
        rows.setdefault(row["video_uri"] or row["image_uri"], []).append(row)
    return rows


def test_every_sampled_frame_gets_a_row_at_the_video_size(video_run):
    assert video_run["rc"] == 0
    rows = _by_source(video_run["output"])
    pan = sorted(rows[str(video_run["inputs"] / "pan.mp4")], key=lambda r: r["frame_index"])
    # 5 of every 10 frames a second: every other frame, by timestamp
    assert [r["frame_index"] for r in pan] == list(range(0, FRAMES, 2))
    assert [r["timestamp_s"] for r in pan] == pytest.approx([i / FPS for i in range(0, FRAMES, 2)])
    assert [r["clip_index"] for r in pan] == [i // 4 for i in range(FRAMES // 2)]  # clips of 4 sampled frames
    for row in pan:
        assert row["error"] is None
        assert row["image_uri"] == frame_uri(row["video_uri"], row["frame_index"])
        assert row["frame_count"] == FRAMES
        assert decode_label_map(row["label_map_png"]).shape == SIZE == (row["height"], row["width"])
        assert {s["class_id"] for s in row["segments"]} <= {2, 5, 8}
    phone = rows[str(video_run["inputs"] / "phone.mov")]
    assert {(r["height"], r["width"]) for r in phone} == {SIZE[::-1]}  # upright: portrait
    assert all(decode_label_map(r["label_map_png"]).shape == SIZE[::-1] for r in phone)
    assert len(rows[str(video_run["inputs"] / "zoom.webm")]) == FRAMES // 2
    vfr = sorted(rows[str(video_run["inputs"] / "vfr.mkv")], key=lambda r: r["timestamp_s"])
    ticks, expected = 0.0, []  # the first frame at or after every 1/5 s tick, by its own timestamp
    for t in VFR_TIMES:
        if t + 1e-9 >= ticks:
            expected.append(t)
            ticks = (int(t * 5 + 1e-9) + 1) / 5
    assert [r["timestamp_s"] for r in vfr] == pytest.approx(expected)
    assert all(r["error"] is None for r in vfr)
    (still,) = rows[str(video_run["inputs"] / "still.jpg")]
    assert still["video_uri"] is None and still["frame_index"] is None and still["error"] is None


def test_frames_are_labeled_as_san_core_labels_their_clips(video_run, parity_dir):
    """The job's label maps are what `label_clip` (proposals shared across each clip) makes of the
    same decoded clips, and differ from labeling the frames one by one as images."""
    tiny = parity_dir / "tiny_a"
    model = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json")).model
    taxonomy = load_taxonomy(str(video_run["vocab"]))
    table = load_or_build_vocabulary(taxonomy, model, cache_dir=None)
    embeddings, class_ids = torch.from_numpy(table.embeddings), torch.tensor([c.id for c in taxonomy.classes])
    names = {c.id: c.name for c in taxonomy.classes}
    uri = str(video_run["inputs"] / "pan.mp4")
    rows = {r["frame_index"]: r for r in _by_source(video_run["output"])[uri]}
    as_images = 0
    for clip in read_clips(uri, clip_length=4, fps=5):
        direct = label_clip(model, clip.frames, clip.output_size, embeddings, class_ids, names)
        tensors = [torch.from_numpy(np.array(f)).permute(2, 0, 1).float() for f in clip.frames]
        with torch.no_grad():
            score_maps = model.predict_video(tensors, embeddings, clip.output_size).score_maps
        for frame, labeled, scores in zip(clip.clip.frames, direct, score_maps, strict=True):
            job = decode_label_map(rows[frame.index]["label_map_png"])
            assert np.array_equal(job, decode_label_map(labeled.label_map_png))
            # confidence from the clip's own score maps, as for an image
            top2 = scores.topk(2, dim=0).values
            margin = ((top2[0] - top2[1]) / top2[0]).clamp(0, 1)
            confidence = top2[0] / scores.sum(dim=0)  # the winner's posterior over the vocabulary
            assert rows[frame.index]["mean_confidence"] == pytest.approx(float(confidence.mean()), abs=1e-4)
            assert rows[frame.index]["mean_raw_score"] == pytest.approx(float(top2[0].mean()), rel=1e-4)
            assert rows[frame.index]["mean_margin"] == pytest.approx(float(margin.mean()), abs=1e-4)
        singles = label_images(model, clip.frames, [clip.output_size] * len(clip.frames), embeddings, class_ids, names)
        as_images += sum(
            not np.array_equal(decode_label_map(a.label_map_png), decode_label_map(b.label_map_png))
            for a, b in zip(direct, singles, strict=True)
        )
    assert as_images > 0, "shared proposals change some frames' labels"


def test_broken_videos_get_clear_error_rows_and_the_rest_is_labeled(video_run):
    rows = _by_source(video_run["output"])
    inputs = video_run["inputs"]
    (notes,) = rows[str(inputs / "notes.avi")]
    assert "not a video" in notes["error"] and notes["error_kind"] == "permanent" and notes["frame_index"] is None
    (podcast,) = rows[str(inputs / "podcast.mkv")]
    assert "no video stream" in podcast["error"] and "audio" in podcast["error"]
    (unreadable,) = rows[str(inputs / "cut.mp4")]
    assert "VideoError" in unreadable["error"] and "not a video FFmpeg can read" in unreadable["error"]
    cut = rows[str(inputs / "cut.mkv")]
    labeled = [r for r in cut if r["error"] is None]
    tail = [r for r in cut if r["error"] is not None]
    assert labeled and len(tail) == 1 and tail[0]["frame_index"] is None
    assert tail[0]["error"].startswith("VideoCutOff: the stream ends at")
    damaged = sorted(rows[str(inputs / "damaged.mp4")], key=lambda r: r["timestamp_s"])
    bad = [r for r in damaged if r["error"] is not None]
    assert bad and all(r["error"].startswith("VideoDamage: a packet at") for r in bad)
    assert {r["clip_index"] for r in bad} not in ({0}, {max(r["clip_index"] for r in damaged)})  # in the middle
    assert damaged[0]["error"] is None and damaged[-1]["error"] is None, "the clips around the damage are labeled"
    assert len({r["image_uri"] for rs in rows.values() for r in rs}) == sum(len(rs) for rs in rows.values())


def test_readers_see_one_table_and_one_row_per_frame(video_run):
    output = video_run["output"]
    counts = duckdb.sql(
        f"SELECT video_uri, count(*) AS n, count(DISTINCT image_uri) AS distinct_rows "
        f"FROM read_parquet('{output}/**/*.parquet') GROUP BY video_uri ORDER BY video_uri NULLS FIRST"
    ).fetchall()
    assert all(n == distinct for _, n, distinct in counts)
    one_file_each = {}
    for path in output.glob("*.parquet"):
        for uri in set(pq.read_table(path, columns=["video_uri"]).column("video_uri").to_pylist()) - {None}:
            one_file_each[uri] = one_file_each.get(uri, 0) + 1
    assert set(one_file_each.values()) == {1}  # a video's rows live in one file: the unit of resume


def test_a_second_run_labels_nothing_and_retries_replace_a_videos_rows(video_run):
    before = _by_source(video_run["output"])
    assert label_main(video_run["args"]) == 0
    manifest = json.loads((video_run["output"] / "_manifest.json").read_text())
    assert manifest["counts"]["skipped"] == manifest["counts"]["inputs"] == 10
    assert _by_source(video_run["output"]) == before
    assert label_main([*video_run["args"], "--retry-errors", "all"]) == 0
    after = _by_source(video_run["output"])
    assert set(after) == set(before)
    for source, rows in after.items():  # the same rows again (the same frames fail the same way), once
        assert sorted(r["image_uri"] for r in rows) == sorted(r["image_uri"] for r in before[source])


def test_previews_of_videos_are_animations(video_run):
    manifest = json.loads((video_run["output"] / "_manifest.json").read_text())
    animated = [p for p in manifest["previews"] if p.endswith(".webp")]
    assert animated
    with Image.open(io.BytesIO(Path(animated[0]).read_bytes())) as preview:
        assert preview.n_frames > 1


def test_vspw_export_writes_frames_and_masks_side_by_side(video_run, tmp_path):
    out = tmp_path / "vspw"
    args = ["--format", "vspw", "--input", str(video_run["output"]), "--vocab", str(video_run["vocab"])]
    assert export_main([*args, "--output", str(out)]) == 0
    rows = _by_source(video_run["output"])
    pan = {r["frame_index"]: r for r in rows[str(video_run["inputs"] / "pan.mp4")]}
    folder = out / "pan"
    assert sorted(p.stem for p in (folder / "mask").iterdir()) == [f"{i:08d}" for i in sorted(pan)]
    assert sorted(p.stem for p in (folder / "origin").iterdir()) == [f"{i:08d}" for i in sorted(pan)]
    with open(video_run["inputs"] / "pan.mp4", "rb") as source, VideoReader(source) as reader:
        decoded = {f.index: f.rgb for f in reader.frames()}
    for index, row in pan.items():
        with Image.open(folder / "mask" / f"{index:08d}.png") as mask:
            assert mask.mode == "P"  # ids as values, the taxonomy's colours in the palette
            assert np.array_equal(np.asarray(mask), decode_label_map(row["label_map_png"]))
        frame = np.asarray(Image.open(folder / "origin" / f"{index:08d}.jpg"))
        assert np.abs(frame.astype(int) - decoded[index]).mean() < 3  # the frame itself, as a JPEG
    damaged = rows[str(video_run["inputs"] / "damaged.mp4")]
    exported = {int(p.stem) for p in (out / "damaged" / "mask").iterdir()}
    assert exported == {r["frame_index"] for r in damaged if r["error"] is None}  # error frames left out
    assert json.loads((out / "label_num_dic_final.json").read_text()) == {"person": 2, "cat": 5, "sky": 8}
    assert "pan" in (out / "videos.txt").read_text().split()


def test_coco_export_carries_video_and_frame_fields(video_run, tmp_path):
    target = tmp_path / "labels.json"
    args = ["--input", str(video_run["output"]), "--vocab", str(video_run["vocab"]), "--output", str(target)]
    assert export_main(args) == 0
    coco = COCO(str(target))
    videos = {v["name"]: v for v in coco.dataset["videos"]}
    assert videos["pan"]["length"] == FRAMES and (videos["pan"]["height"], videos["pan"]["width"]) == SIZE
    pan = {r["frame_index"]: r for r in _by_source(video_run["output"])[str(video_run["inputs"] / "pan.mp4")]}
    frames = [i for i in coco.dataset["images"] if i.get("video_id") == videos["pan"]["id"]]
    assert sorted(i["frame_id"] for i in frames) == sorted(pan)
    for image in frames:
        assert image["file_name"] == f"pan/origin/{image['frame_id']:08d}.jpg"
        label_map = decode_label_map(pan[image["frame_id"]]["label_map_png"])
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            assert np.array_equal(coco.annToMask(annotation).astype(bool), label_map == annotation["category_id"])
    stills = [i for i in coco.dataset["images"] if "video_id" not in i]
    assert [i["file_name"] for i in stills] == ["still.jpg"]


def _growing_video(first: int, then: int, count: int) -> bytes:
    """An MJPEG .mov whose header (and first frame) says `first`x`first` and whose next `count`
    frames are `then`x`then`: each packet is a JPEG of its own size, as a crafted file can be."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mov") as container:
        stream = container.add_stream("mjpeg", rate=4)
        stream.width = stream.height = first
        stream.pix_fmt = "yuvj420p"
        for index, side in enumerate([first] + [then] * count):
            jpeg = io.BytesIO()
            Image.fromarray(camera_frames(skimage.data.coffee(), 1, (side, side))[0]).save(jpeg, "JPEG")
            packet = av.Packet(jpeg.getvalue())
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, index, index, Fraction(1, 4)
            container.mux(packet)
    return buffer.getvalue()


def test_every_decoded_frame_is_held_to_the_pixel_budget(ray_session, tmp_path, tiny_weights):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    # the reported file: 64x64 declared and first, then 8 frames of 144 Mpx (here 200x200 against a
    # budget of 10,000 pixels, the same shape at a test's size)
    (inputs / "grows.mov").write_bytes(_growing_video(64, 200, 8))
    (inputs / "empty.mp4").write_bytes(b"")
    output = tmp_path / "out"
    args = ["--vocab", "voc20", "--input", str(inputs), "--output", str(output), "--fps", "4", "--clip-length", "4"]
    args += ["--max-pixels", "10000", "--max-error-ratio", "1", *tiny_weights]
    assert label_main(args) == 0
    rows = _by_source(output)
    grows = sorted(rows[str(inputs / "grows.mov")], key=lambda r: r["frame_index"])
    assert [r["frame_index"] for r in grows] == list(range(9))
    assert grows[0]["error"] is None and grows[0]["label_map_png"] is not None  # the frame within budget
    for row in grows[1:]:
        assert row["image_uri"] == frame_uri(str(inputs / "grows.mov"), row["frame_index"])
        assert row["error"] == (
            f"FrameTooLarge: frame {row['frame_index']} is 200x200 = 40,000 pixels, over the limit of 10,000 "
            "(--max-pixels)"
        )
    (empty,) = rows[str(inputs / "empty.mp4")]
    assert (
        empty["error"] == f"cannot read video: VideoError: {inputs / 'empty.mp4'}: an empty file (0 bytes), not a video"
    )
    assert len({r["image_uri"] for rs in rows.values() for r in rs}) == sum(len(rs) for rs in rows.values())


def test_error_rows_of_one_clip_have_their_own_uris():
    damage = [
        Damage(1.0, "v.mp4: a packet at 1.000 s could not be decoded (x)", "packet"),
        Damage(2.0, "v.mp4: a packet at 2.000 s could not be decoded (y)", "packet"),
        Damage(2.5, "v.mp4: the stream ends at 2.500 s of the 9.000 s its container declares", "cut"),
    ]
    clip = ModelClip(3, Clip([], damage), [], (0, 0), 90)
    rows = clip_rows(clip, "v.mp4", lambda clip: [])
    assert [r["image_uri"] for r in rows] == ["v.mp4#clip=3", "v.mp4#clip=3&error=1", "v.mp4#clip=3&error=2"]
    assert [r["error"].split(":")[0] for r in rows] == ["VideoDamage", "VideoDamage", "VideoCutOff"]

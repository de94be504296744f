"""Reading videos with PyAV: every container the job takes, sampling by time or count (variable
frame rates by timestamp), frames turned upright by the display matrix, and broken files
(not a video, no video stream, cut off, damaged in the middle) told apart from good ones."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from video_fixtures import FORMATS, audio_only, camera_frames, encode

from pipeline.media.video import Damage, SampledFrame, VideoError, VideoReader, clips, is_video


def _read(data: bytes, **sampling) -> list[SampledFrame | Damage]:
    with VideoReader(io.BytesIO(data), "clip.mp4") as reader:
        return list(reader.frames(**sampling))


@pytest.mark.parametrize("container", sorted(FORMATS))
def test_each_container_decodes_to_the_frames_that_were_encoded(container):
    frames = camera_frames(skimage.data.astronaut(), 20, (96, 128))
    decoded = _read(encode(frames, container))
    assert all(isinstance(f, SampledFrame) for f in decoded)
    assert [f.index for f in decoded] == list(range(20))
    assert [f.timestamp_s for f in decoded] == pytest.approx([i / 10 for i in range(20)], abs=1e-3)
    for ours, source in zip(decoded, frames, strict=True):
        assert ours.rgb.shape == (96, 128, 3) and ours.rgb.dtype == np.uint8
        assert np.abs(ours.rgb.astype(int) - source).mean() < 12  # lossy codecs, the same picture
    # the pan moves the picture: consecutive frames differ more than codec noise
    assert np.abs(decoded[0].rgb.astype(int) - decoded[19].rgb).mean() > 20


def test_sampling_by_time_and_by_count():
    frames = camera_frames(skimage.data.coffee(), 30, (80, 100), motion="zoom")
    data = encode(frames, "mp4", fps=15)  # two seconds
    by_time = _read(data, fps=4)
    assert [round(f.timestamp_s, 3) for f in by_time] == [0.0, 0.267, 0.533, 0.8, 1.0, 1.267, 1.533, 1.8]
    assert [f.index for f in _read(data, stride=7)] == [0, 7, 14, 21, 28]


def test_variable_frame_rate_is_sampled_by_timestamp():
    """Frames 0.1 s apart, then a 1 s pause, then 0.02 s apart: two samples a second land on the
    first frame at or after each half second."""
    times = [0.0, 0.1, 0.2, 0.3, 1.3, 1.32, 1.34, 1.36, 1.38, 1.4, 1.55, 1.6, 2.05]
    frames = camera_frames(skimage.data.chelsea(), len(times), (64, 96))
    decoded = _read(encode(frames, "mkv", times=times), fps=2)
    assert [f.timestamp_s for f in decoded] == pytest.approx([0.0, 1.3, 1.55, 2.05], abs=1e-3)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_frames_come_out_upright(rotation):
    """A phone's portrait video: landscape pixels plus a display matrix that turns them."""
    frames = camera_frames(skimage.data.astronaut(), 4, (64, 96))
    decoded = _read(encode(frames, "mp4", rotation=rotation))
    turns = (rotation // 90) % 4
    for ours, source in zip(decoded, frames, strict=True):
        upright = np.rot90(source, turns)
        assert ours.rgb.shape == upright.shape
        matched = np.abs(ours.rgb.astype(int) - upright).mean()
        assert matched < 12
        assert np.abs(ours.rgb.astype(int) - np.rot90(source, turns + 2)).mean() > 2 * matched  # not upside down


def test_files_that_are_not_videos_say_why():
    with pytest.raises(VideoError, match="not a video"):
        VideoReader(io.BytesIO(b"plain text, named .mp4 by mistake"), "notes.mp4")
    with pytest.raises(VideoError, match=r"no video stream \(streams: audio\)"):
        VideoReader(io.BytesIO(audio_only()), "podcast.mkv")


def test_a_cut_off_file_is_told_apart_from_a_whole_one():
    frames = camera_frames(skimage.data.astronaut(), 40, (96, 128))
    whole = encode(frames, "mkv")
    decoded = _read(whole[: len(whole) // 2])
    good = [f for f in decoded if isinstance(f, SampledFrame)]
    assert 5 < len(good) < 40
    assert isinstance(decoded[-1], Damage) and "cut-off or damaged" in decoded[-1].message
    mp4 = encode(frames, "mp4")  # its index sits at the end: nothing is readable without it
    with pytest.raises(VideoError, match="not a video"):
        VideoReader(io.BytesIO(mp4[: len(mp4) // 2]), "cut.mp4")


def test_damage_in_the_middle_is_reported_where_it_is_and_decoding_goes_on():
    frames = camera_frames(skimage.data.coffee(), 40, (96, 128))
    data = bytearray(encode(frames, "mp4"))
    middle = len(data) // 2
    data[middle : middle + 600] = bytes(600)
    decoded = _read(bytes(data))
    damage = [d for d in decoded if isinstance(d, Damage)]
    good = [f for f in decoded if isinstance(f, SampledFrame)]
    assert len(damage) >= 1 and "could not be decoded" in damage[0].message
    assert len(good) >= 35 and good[-1].timestamp_s == pytest.approx(3.9)
    assert 1.0 < damage[0].timestamp_s < 3.0  # in the middle of the 4 s video

    grouped = list(clips(iter(decoded), 8))
    assert sum(len(c.frames) for c in grouped) == len(good)
    damaged = [i for i, c in enumerate(grouped) if c.damage]
    assert len(damaged) == 1 and 0 < damaged[0] < len(grouped) - 1  # one clip in the middle; the rest are fine


def test_clips_group_consecutive_frames():
    frames = camera_frames(skimage.data.chelsea(), 10, (64, 64))
    grouped = list(clips(iter(_read(encode(frames, "webm"))), 4))
    assert [[f.index for f in c.frames] for c in grouped] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert is_video("s3://b/cams/a.MP4") and is_video("x.webm?versionId=3") and not is_video("x.jpg")


def test_a_video_on_s3_is_read_in_ranged_requests_clip_by_clip(s3_server, s3_bucket):
    """Through s3fs with a small read block, the decoder pulls the file in many ranged GETs (the
    video is never fetched whole), and the clips come out resized for the model."""
    import fsspec
    from faults import FaultyProxy

    from pipeline.media.clips import read_clips

    proxy = FaultyProxy(int(s3_server.rsplit(":", 1)[1]))
    try:
        options = {"endpoint_url": proxy.endpoint, "default_block_size": 16 * 1024, "skip_instance_cache": True}
        fs = fsspec.filesystem("s3", **options)
        video = encode(camera_frames(skimage.data.astronaut(), 60, (96, 128)), "avi")  # about 75 KB
        uri = f"{s3_bucket}/videos/pan.avi"
        fs.pipe(uri, video)
        proxy.requests.clear()
        got = list(read_clips(uri, clip_length=8, stride=2, short_side=48, storage_options=options))
        gets = sum(n for (method, path), n in proxy.requests.items() if method == "GET" and path.endswith("pan.avi"))
    finally:
        proxy.close()
    assert len(video) > 64 * 1024 and gets >= 4  # ranged reads of 16 KiB blocks
    assert [len(c.frames) for c in got] == [8, 8, 8, 6]
    assert [c.index for c in got] == [0, 1, 2, 3]
    assert all(f.shape == (48, 64, 3) for c in got for f in c.frames) and got[0].output_size == (96, 128)
    assert [f.index for f in got[1].clip.frames] == list(range(16, 32, 2))

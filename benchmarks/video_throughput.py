"""The video path against labeling the same frames as images, and what a clip costs in memory.

    python benchmarks/video_throughput.py [--frames 16] [--clip-lengths 4,8,16] [--vocab ade150]

A video is encoded with PyAV from a scikit-image photograph panned by a camera (640x480, so its
frames reach the model at 853x640, short side 640). Each clip length runs in a fresh worker
process with random `san-vit-b16` weights (speed does not depend on the values), which times, on
the same decoded frames:

- decoding: `read_clips` (PyAV, sampling, resizing to the model's size), frames/s;
- the video path: `label_clip` per clip (proposals clustered with k-means and shared across the
  clip, class logits averaged over it), frames/s, and the k-means alone, ms per clip;
- the image path: `label_images` on the same frames, one at a time and a clip's worth at once;

and reports the worker's peak RSS (weights, activations of a whole clip, label maps) after the
video path: what a labeling actor needs at that clip length.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' video encoder


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(video: str, clip_length: int, vocab: str, weights: str) -> dict:
    import numpy as np
    import torch

    from pipeline.labeling.inference import label_images
    from pipeline.labeling.video_inference import label_clip
    from pipeline.media.clips import read_clips
    from san_core.build import build_model
    from san_core.presets import get_preset
    from san_core.video import cluster_queries
    from schemas.taxonomy import load_taxonomy

    torch.set_grad_enabled(False)
    model = build_model(get_preset("san-vit-b16").config)
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    classes = [c.name for c in load_taxonomy(vocab).classes]
    embeddings = model.class_embeddings(classes, templates=["a photo of a {}."])
    class_ids = torch.arange(1, len(classes) + 1)
    names = {i + 1: n for i, n in enumerate(classes)}

    start = time.perf_counter()
    clips = list(read_clips(video, clip_length))
    decode_s = time.perf_counter() - start
    frames = sum(len(c.frames) for c in clips)

    label_clip(model, clips[0].frames[:2], clips[0].output_size, embeddings, class_ids, names)  # warm-up
    start = time.perf_counter()
    for clip in clips:
        label_clip(model, clip.frames, clip.output_size, embeddings, class_ids, names)
    video_s = time.perf_counter() - start
    peak = _peak_rss_mib()

    queries = torch.randn(clip_length, model.config.side_adapter.num_queries, model.config.side_adapter.embed_dim)
    start = time.perf_counter()
    cluster_queries(queries, model.config.num_clusters)
    kmeans_s = time.perf_counter() - start

    start = time.perf_counter()
    for clip in clips:
        for frame in clip.frames:
            label_images(model, [frame], [clip.output_size], embeddings, class_ids, names)
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    for clip in clips:
        label_images(model, clip.frames, [clip.output_size] * len(clip.frames), embeddings, class_ids, names)
    batched_s = time.perf_counter() - start
    return {
        "frames": frames,
        "model_size": list(np.asarray(clips[0].frames[0]).shape[:2]),
        "decode_fps": frames / decode_s,
        "video_fps": frames / video_s,
        "kmeans_ms": kmeans_s * 1e3,
        "image_fps": frames / single_s,
        "image_batch_fps": frames / batched_s,
        "peak_rss_mib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--clip-lengths", default="4,8,16")
    parser.add_argument("--vocab", default="ade150")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        video, clip_length, vocab, weights = args.worker
        print(json.dumps(worker(video, int(clip_length), vocab, weights)))
        return

    import skimage.data
    import torch
    from video_fixtures import camera_frames, encode

    from san_core.build import build_model
    from san_core.presets import get_preset

    threads = torch.get_num_threads()
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, {threads} threads; san-vit-b16, {args.vocab}")
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "pan.mp4"
        photo = skimage.data.astronaut()
        photo = (
            torch.nn.functional.interpolate(  # a larger scene for the camera to pan across
                torch.from_numpy(photo).permute(2, 0, 1)[None].float(), scale_factor=2, mode="bilinear"
            )[0]
            .permute(1, 2, 0)
            .byte()
            .numpy()
        )
        video.write_bytes(encode(camera_frames(photo, args.frames, (480, 640), "pan"), "mp4", fps=10))
        torch.manual_seed(0)
        weights = Path(tmp) / "weights.pt"
        torch.save(build_model(get_preset("san-vit-b16").config).state_dict(), weights)
        print(
            "| clip length | frames | model input | decode frames/s | video path frames/s | k-means ms/clip | "
            "images frames/s (one at a time) | images frames/s (a clip at once) | video / images | "
            "peak RSS MiB |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for clip_length in (int(c) for c in args.clip_lengths.split(",")):
            command = [sys.executable, __file__, "--worker", str(video), str(clip_length), args.vocab, str(weights)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            height, width = result["model_size"]
            print(
                f"| {clip_length} | {result['frames']} | {width}x{height} | {result['decode_fps']:.1f} | "
                f"{result['video_fps']:.2f} | {result['kmeans_ms']:.0f} | {result['image_fps']:.2f} | "
                f"{result['image_batch_fps']:.2f} | {result['video_fps'] / result['image_fps']:.2f} | "
                f"{result['peak_rss_mib']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

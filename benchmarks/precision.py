"""fp32 against bf16 autocast on the job path: seconds per image and how far the labels agree.

    python benchmarks/precision.py [--models tiny,san-vit-b16] [--vocab ade150]

For each photo (scikit-image's astronaut, coffee, chelsea at short side 640) it times
`label_images` (uint8 pixels to label map PNG and segments, as an actor does) in fp32 and in bf16,
median of three after a warm-up, and compares the label maps: agreement on the pixels where
fp32's top-two score margin is at least 1 % of its top score (the share of such pixels is
printed), and on all pixels. san-vit-b16 has random weights saved as a checkpoint (speed does not
depend on the values; the agreement of a random network is a statement about numerics only).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pipeline_throughput import weights_for  # noqa: E402

from pipeline.labeling.inference import LabeledImage, label_images  # noqa: E402
from pipeline.masks.label_maps import decode_label_map  # noqa: E402
from pipeline.media.images import resize_short_side  # noqa: E402
from pipeline.vocabulary import load_or_build_vocabulary  # noqa: E402
from pipeline.weights import resolve_weights  # noqa: E402
from san_core.precision import cpu_runs_bf16_natively  # noqa: E402
from schemas.taxonomy import load_taxonomy  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea")


def timed_job(precision: str, *job_args: object, repeats: int = 3) -> tuple[float, LabeledImage]:
    """Median seconds of `label_images(*job_args, precision=...)` after a warm-up, and its result."""
    run = partial(label_images, *job_args, precision=precision)
    (result,) = run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        (result,) = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,san-vit-b16")
    parser.add_argument("--vocab", default="ade150")
    parser.add_argument("--short-side", type=int, default=640)
    args = parser.parse_args()
    import skimage.data

    print(
        f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"native CPU bf16: {cpu_runs_bf16_natively()}; vocabulary {args.vocab}, short side {args.short_side}"
    )
    print("| model | photo | fp32 s/img | bf16 s/img | speed-up | agreement where fp32 is sure | "
          "share of such pixels | agreement on all pixels |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    taxonomy = load_taxonomy(args.vocab)
    names = {c.id: c.name for c in taxonomy.classes}
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models.split(","):
            choice = weights_for(model_name, Path(tmp))
            model, _ = resolve_weights(choice, {}, True).load("cpu")
            table = load_or_build_vocabulary(taxonomy, model, cache_dir=None)
            embeddings = torch.from_numpy(table.embeddings)
            class_ids = torch.from_numpy(table.class_ids.astype(np.int64))
            for photo in PHOTOS:
                rgb = getattr(skimage.data, photo)()[..., :3]
                image = resize_short_side(rgb, args.short_side)
                size = image.shape[:2]
                job_args = (model, [image], [size], embeddings, class_ids, names, table.background)
                fp32_s, fp32 = timed_job("fp32", *job_args)
                bf16_s, bf16 = timed_job("bf16", *job_args)
                with torch.no_grad():
                    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
                    (scores,) = model.predict([tensor], embeddings, background=table.background)
                top2 = scores.topk(2, dim=0).values
                sure = ((top2[0] - top2[1]) >= 0.01 * top2[0]).numpy()
                del scores, top2
                same = decode_label_map(fp32.label_map_png) == decode_label_map(bf16.label_map_png)
                print(
                    f"| {model_name} | {photo} {size[1]}x{size[0]} | {fp32_s:.2f} | {bf16_s:.2f} | "
                    f"{fp32_s / bf16_s:.2f}x | {same[sure].mean():.2%} | {sure.mean():.1%} | {same.mean():.2%} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

"""How close the job path runs to this machine's limit: the measured matrix-multiply throughput
(fp32 and bf16) against the GFLOP/s each stage of the job path achieves on one photo.

    python benchmarks/gflops.py [--photo coffee] [--vocab ade150] [--short-side 640]

FLOPs per stage are counted by PyTorch's FlopCounterMode (matrix products, convolutions and
attention; element-wise work is not counted, so a stage dominated by it shows a low rate). PyTorch
has no formula for its CPU attention kernel, so this script registers the one its GPU kernels use.
Times are the median of three runs after a warm-up. san-vit-b16 has random weights (speed does
not depend on the values).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pipeline_throughput import weights_for  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula, sdpa_flop_count  # noqa: E402

from pipeline.media.images import resize_short_side  # noqa: E402
from pipeline.vocabulary import load_or_build_vocabulary  # noqa: E402
from pipeline.weights import resolve_weights  # noqa: E402
from san_core.postprocess import semantic_label_tiles  # noqa: E402
from schemas.taxonomy import load_taxonomy  # noqa: E402

CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if CPU_ATTENTION not in flop_registry:  # counted as free otherwise: most of the side adapter's work

    @register_flop_formula(CPU_ATTENTION)
    def _cpu_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001, ANN002, ANN003
        return sdpa_flop_count(query_shape, key_shape, value_shape)


def matmul_peak(dtype: torch.dtype, n: int = 2048) -> float:
    """GFLOP/s of the best of five n x n matrix products."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(5))
    return 2 * n**3 / best / 1e9


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def median_seconds(run: Callable[[], object]) -> float:
    run()
    return statistics.median(_seconds(run) for _ in range(3))


def flops(run: Callable[[], object]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photo", default="coffee")
    parser.add_argument("--vocab", default="ade150")
    parser.add_argument("--short-side", type=int, default=640)
    args = parser.parse_args()
    import skimage.data

    torch.set_grad_enabled(False)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = resolve_weights(weights_for("san-vit-b16", Path(tmp)), {}, True).load("cpu")
    taxonomy = load_taxonomy(args.vocab)
    table = load_or_build_vocabulary(taxonomy, model, cache_dir=None)
    embeddings = torch.from_numpy(table.embeddings)
    rgb = resize_short_side(getattr(skimage.data, args.photo)()[..., :3], args.short_side)
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
    size = tuple(rgb.shape[:2])
    last = model.config.san.clip_feature_last_layer

    batch = model.preprocess([image])
    clip_input = F.interpolate(batch, scale_factor=model.config.san.clip_resolution, mode="bilinear")
    features = model.clip_features(clip_input)
    mask_logits, biases = (x[-1] for x in model.side_adapter(batch, features.maps))
    regions = model.recognition_head(features.cls_tokens[last], features.maps[last], biases)
    class_logits = model.text_classifier.class_logits(regions, embeddings, table.background)
    padded = (int(batch.shape[-2]), int(batch.shape[-1]))
    stages = {
        "CLIP blocks (features)": lambda: model.clip_features(clip_input),
        "side adapter + mask decoder": lambda: model.side_adapter(batch, features.maps),
        "recognition head + classifier": lambda: model.text_classifier.class_logits(
            model.recognition_head(features.cls_tokens[last], features.maps[last], biases), embeddings, True
        ),
        "label map (fused argmax)": lambda: [
            t.labels for t in semantic_label_tiles(class_logits[0], mask_logits[0], padded, size, size)
        ],
    }
    print(
        f"{args.photo} {size[1]}x{size[0]}, san-vit-b16, {args.vocab}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s"
    )
    print("| stage | GFLOP | fp32 s | fp32 GFLOP/s | % of fp32 peak | bf16 s | bf16 GFLOP/s | % of bf16 peak |")
    print("|---|---|---|---|---|---|---|---|")
    totals = {"flop": 0.0, "fp32": 0.0, "bf16": 0.0}
    for name, run in stages.items():
        work = flops(run)
        row = [name, f"{work / 1e9:.1f}"]
        totals["flop"] += work
        for precision in ("fp32", "bf16"):
            # the label map is made in fp32 in both modes (the logits come back to fp32)
            context = precision if not name.startswith("label map") else "fp32"

            def timed(run=run, context=context) -> None:
                with model.inference_precision(context):
                    run()

            seconds = median_seconds(timed)
            totals[precision] += seconds
            rate = work / seconds / 1e9
            row += [f"{seconds:.3f}", f"{rate:.0f}", f"{rate / peaks[precision]:.0%}"]
        print("| " + " | ".join(row) + " |", flush=True)
    total = [f"{totals['flop'] / 1e9:.1f}"]
    for precision in ("fp32", "bf16"):
        rate = totals["flop"] / totals[precision] / 1e9
        total += [f"{totals[precision]:.3f}", f"{rate:.0f}", f"{rate / peaks[precision]:.0%}"]
    print("| **job path, model and label map** | " + " | ".join(total) + " |")


if __name__ == "__main__":
    main()

"""Measure labeling quality with the SAN benchmark protocol (mIoU, fwIoU, mACC, pACC).

    # (a) run a model over a benchmark in its reference folder layout, then score it
    python jobs/evaluate.py run --dataset ade150 --root datasets/ --report reports/ade150 --checkpoint san_vit_b_16.pth
    # (b) score an existing labeling output against ground-truth label maps (folder or manifest)
    python jobs/evaluate.py score --labels s3://bucket/labels/ --ground-truth s3://bucket/gt/ \
        --vocab taxonomy.yaml --report reports/run1

Writes metrics.json (every number), metrics.md (per-class IoU, sorted) and iou.png (bar chart).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

import fsspec  # noqa: E402

from jobs.label import parse_concurrency  # noqa: E402
from schemas.jobs import LabelJobConfig, ModelChoice  # noqa: E402
from schemas.taxonomy import TaxonomyError, load_taxonomy  # noqa: E402

# Reference layouts under DETECTRON2_DATASETS: (images, ground truth, ignore value); ground truth
# holds class indices 0..C-1 of the matching shipped vocabulary.
BENCHMARKS: dict[str, tuple[str, str, int]] = {
    "ade150": ("ADEChallengeData2016/images/validation", "ADEChallengeData2016/annotations_detectron2/validation", 255),
    "ade847": (
        "ADE20K_2021_17_01/images_detectron2/validation",
        "ADE20K_2021_17_01/annotations_detectron2/validation",
        65535,
    ),
    "voc20": ("VOC2012/JPEGImages", "VOC2012/annotations_detectron2/val", 255),
    "pc59": ("pcontext/val/image", "pcontext/val/label", 255),
    "pc459": ("pcontext_full/val/image", "pcontext_full/val/label", 65535),
    "coco-stuff-171": ("coco/val2017", "coco/stuffthingmaps_detectron2/val2017", 255),
}


def _print_summary(result: dict, written: list[str]) -> None:
    print(
        f"{result['taxonomy']}: mIoU {result['mIoU']:.2f}  fwIoU {result['fwIoU']:.2f}  "
        f"mACC {result['mACC']:.2f}  pACC {result['pACC']:.2f}  ({result['images']['scored']} images)"
    )
    print("reports: " + ", ".join(written))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/evaluate.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    run = sub.add_parser("run", help="(a) label a benchmark with the Ray pipeline, then score it")
    run.add_argument("--dataset", required=True, choices=sorted(BENCHMARKS))
    run.add_argument("--root", required=True, help="the DETECTRON2_DATASETS folder (path or URI)")
    run.add_argument("--labels", default=None, help="where the labels go (default: REPORT/labels)")
    weights = run.add_mutually_exclusive_group()
    weights.add_argument("--model", default=None)
    weights.add_argument("--checkpoint", default=None)
    run.add_argument("--model-config", default=None)
    run.add_argument("--batch-size", type=int, default=4)
    run.add_argument("--concurrency", type=parse_concurrency, default=(1, 1), help="actor pool size: MIN[,MAX]")
    run.add_argument("--gpus-per-actor", type=float, default=None)
    score = sub.add_parser("score", help="(b) score an existing labeling output")
    score.add_argument("--labels", required=True, help="the labeling job's --output")
    score.add_argument("--ground-truth", required=True, help="folder of label maps, or manifest with label_uri")
    score.add_argument("--vocab", required=True)
    score.add_argument("--ignore-label", type=int, default=255)
    for p in (run, score):
        p.add_argument("--report", required=True, help="folder for metrics.json, metrics.md, iou.png")
        p.add_argument("--storage-options", type=json.loads, default={})
    args = parser.parse_args(argv)

    import ray

    from pipeline.evaluation.scoring import evaluate_output, list_ground_truth, stem, write_reports
    from pipeline.inputs import InputError, list_inputs
    from pipeline.labeling.job import plan_label_job, run_label_job
    from pipeline.weights import WeightsError

    if args.mode == "score":
        try:
            taxonomy = load_taxonomy(args.vocab, args.storage_options)
        except TaxonomyError as e:
            print(f"invalid taxonomy:\n{e}", file=sys.stderr)
            return 2
        ray.init(logging_level="WARNING")
        try:
            result = evaluate_output(args.labels, args.ground_truth, taxonomy, args.ignore_label, args.storage_options)
        finally:
            ray.shutdown()
        _print_summary(result, write_reports(result, args.report, args.storage_options))
        return 0

    images_dir, gt_dir, ignore = BENCHMARKS[args.dataset]
    root = args.root.rstrip("/")
    taxonomy = load_taxonomy(args.dataset)
    ground_truth = list_ground_truth(f"{root}/{gt_dir}", args.storage_options)
    try:
        images = [u for u in list_inputs(f"{root}/{images_dir}", args.storage_options) if stem(u) in ground_truth]
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    labels = args.labels or f"{args.report.rstrip('/')}/labels"
    inputs_manifest = f"{labels.rstrip('/')}/_inputs.txt"  # '_' files are not results
    with fsspec.open(inputs_manifest, "w", **args.storage_options) as f:
        f.write("\n".join(images) + "\n")
    config = LabelJobConfig(
        vocab=args.dataset,
        input=inputs_manifest,
        output=labels,
        weights=ModelChoice.from_flags(args.model, args.checkpoint, args.model_config),
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        gpus_per_actor=args.gpus_per_actor,
        storage_options=args.storage_options,
    )
    try:
        plan = plan_label_job(config, taxonomy)
    except (InputError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ray.init(logging_level="WARNING")
    try:
        run_label_job(plan)
        result = evaluate_output(labels, f"{root}/{gt_dir}", taxonomy, ignore, args.storage_options)
    finally:
        ray.shutdown()
    _print_summary(result, write_reports(result, args.report, args.storage_options))
    return 0


if __name__ == "__main__":
    sys.exit(main())

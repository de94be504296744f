"""The SAN benchmarks in their reference folder layouts, and `label_benchmark`, which labels one
with the labeling job so that `scoring.evaluate_output` can score it."""

from __future__ import annotations

import fsspec

from schemas.jobs import EvaluateRunConfig, LabelJobConfig
from schemas.taxonomy import Taxonomy

from ..inputs import list_inputs
from ..labeling.job import JobPlan, plan_label_job
from .scoring import list_ground_truth, stem

# Under DETECTRON2_DATASETS: (images, ground truth, ignore value); ground truth holds class
# indices 0..C-1 of the shipped vocabulary of the same name.
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


def benchmark_paths(config: EvaluateRunConfig) -> tuple[str, str, int]:
    """(images folder, ground-truth folder, ignore value) of the benchmark under --input."""
    images, ground_truth, ignore = BENCHMARKS[config.dataset]
    root = config.input.rstrip("/")
    return f"{root}/{images}", f"{root}/{ground_truth}", ignore


def labels_location(config: EvaluateRunConfig) -> str:
    return config.labels or f"{config.output.rstrip('/')}/labels"


def plan_benchmark_labels(config: EvaluateRunConfig, taxonomy: Taxonomy, run_id: str | None = None) -> JobPlan:
    """The labeling plan for the benchmark's images that have ground truth (raises InputError /
    WeightsError before any work). The image list is written beside the labels as `_inputs.txt`."""
    images_dir, gt_dir, _ = benchmark_paths(config)
    ground_truth = list_ground_truth(gt_dir, config.storage_options)
    images = [u for u in list_inputs(images_dir, config.storage_options) if stem(u) in ground_truth]
    labels = labels_location(config)
    inputs_manifest = f"{labels.rstrip('/')}/_inputs.txt"  # '_' files are not results
    with fsspec.open(inputs_manifest, "w", **config.storage_options) as f:
        f.write("\n".join(images) + "\n")
    label_config = LabelJobConfig(
        vocab=config.dataset,
        input=inputs_manifest,
        output=labels,
        weights=config.weights,
        batch_size=config.batch_size,
        concurrency=config.concurrency,
        gpus_per_actor=config.gpus_per_actor,
        storage_options=config.storage_options,
    )
    return plan_label_job(label_config, taxonomy, run_id=run_id)

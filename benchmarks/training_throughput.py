"""Fine-tuning steps/s and peak memory (random weights: speed does not depend on them).

    python benchmarks/training_throughput.py [--model san-vit-b16] [--batch-size 4] [--steps 3]

Times `san_core.training.training_step` (the step the Ray Train workers run: training forward
with deep supervision, Hungarian matching, point-sampled losses, backward, full-model clipping,
AdamW) on 640x640 crops of real photographs with a synthetic 4-region label map per image, 150
classes. Runs fp32 on the CPU, and on a GPU when there is one, fp32 and bf16 autocast. One
warm-up step is not timed. Prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402

from benchmarks.model_throughput import device_runs, environment, timed  # noqa: E402
from pipeline.training.data import AugmentConfig, augment, targets_from_labels  # noqa: E402
from san_core.build import build_model  # noqa: E402
from san_core.criterion import SetCriterion, Target  # noqa: E402
from san_core.optim import build_optimizer, poly_schedule  # noqa: E402
from san_core.presets import get_preset  # noqa: E402
from san_core.training import TrainingForward, training_step  # noqa: E402

NUM_CLASSES = 150
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _samples(batch: int, crop: int, device: str) -> tuple[list[torch.Tensor], list[Target]]:
    rng = np.random.default_rng(0)
    images, targets = [], []
    for i in range(batch):
        rgb = getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()
        labels = np.zeros(rgb.shape[:2], dtype=np.uint16)
        h, w = labels.shape
        labels[: h // 2, w // 2 :], labels[h // 2 :, : w // 2], labels[h // 2 :, w // 2 :] = 11, 22, 33
        image, label = augment(rgb, labels, AugmentConfig.for_crop(crop), rng)
        indices, masks = targets_from_labels(label, {0: 0, 11: 1, 22: 2, 33: 3})
        images.append(torch.from_numpy(image).permute(2, 0, 1).float().to(device))
        targets.append(Target(torch.from_numpy(indices).to(device), torch.from_numpy(masks).float().to(device)))
    return images, targets


def measure(model_name: str, device: str, dtype: str, batch: int, crop: int, steps: int) -> tuple[float, float, int]:
    torch.manual_seed(0)
    san = build_model(get_preset(model_name).config, device).train()
    trainable = san.freeze_for_finetuning()
    network = TrainingForward(san)
    embeddings = torch.nn.functional.normalize(
        torch.randn(NUM_CLASSES, san.text_classifier.bg_embed.shape[-1], device=device), dim=-1
    )
    optimizer = build_optimizer(san)
    scheduler = poly_schedule(optimizer, steps + 1)
    criterion = SetCriterion(num_classes=NUM_CLASSES)
    images, targets = _samples(batch, crop, device)
    autocast_dtype = torch.bfloat16 if dtype == "bf16" else None

    def step() -> None:
        training_step(network, san, criterion, optimizer, scheduler, images, targets, embeddings, 0.01, autocast_dtype)

    elapsed, peak = timed(step, steps, device)
    return steps / elapsed, peak, trainable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="san-vit-b16")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=640)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cpu-steps", type=int, default=None, help="fewer timed steps on the CPU")
    args = parser.parse_args()

    print(
        f"model {args.model} (random weights), {args.crop}x{args.crop} crops, batch {args.batch_size}, "
        f"{NUM_CLASSES} classes, " + environment()
    )
    print("| device | precision | steps/s | s/step | images/s | peak memory | trainable parameters |")
    print("|---|---|---|---|---|---|---|")
    for device, dtype in device_runs():
        steps = args.cpu_steps or args.steps if device == "cpu" else args.steps
        rate, peak, trainable = measure(args.model, device, dtype, args.batch_size, args.crop, steps)
        memory = f"{peak:.0f} MiB " + ("GPU allocated" if device == "cuda" else "RSS")
        print(
            f"| {device} | {dtype} | {rate:.3f} | {1 / rate:.2f} | {rate * args.batch_size:.2f} | {memory} "
            f"| {trainable:,} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

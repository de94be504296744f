"""Throughput and peak memory of SAN inference (random weights: speed does not depend on them).

    python benchmarks/model_throughput.py [--model san-vit-b16] [--iters 3]

Measures `SAN.predict_labels` (everything from the image to the label map and its scores at the
input size, what the labeling actors run) on 640x853 inputs (short side 640, the reference test
size; a 3:4 photo), for batch 1 and 4: fp32 on the CPU, and on a GPU when there is one, fp32 and
bf16 autocast. Prints a table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from san_core.build import build_model  # noqa: E402
from san_core.presets import get_preset  # noqa: E402

VOCABULARY = [f"class {i}" for i in range(150)]  # ADE-150 sized vocabulary


def _reset_cpu_peak() -> None:
    # Writing 5 to clear_refs resets the kernel's peak-RSS counter (VmHWM) for this process.
    Path("/proc/self/clear_refs").write_text("5")


def _cpu_peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(run: Callable[[], object], repeats: int, device: str) -> tuple[float, float]:
    """Seconds taken by `repeats` calls of `run` after one untimed warm-up, and the peak memory
    (MiB) during them: the process's peak RSS on the CPU, torch's max allocated on a GPU."""
    run()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_cpu_peak()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return elapsed, torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _cpu_peak_mib()


def device_runs() -> list[tuple[str, str]]:
    """(device, precision) pairs to measure: fp32 on the CPU; fp32 and bf16 on a GPU if there is one."""
    return [("cpu", "fp32")] + ([("cuda", "fp32"), ("cuda", "bf16")] if torch.cuda.is_available() else [])


def environment() -> str:
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads{gpu}"


def measure(
    model, classifier, device: str, batch: int, dtype: str, iters: int, size: tuple[int, int]
) -> tuple[float, float]:
    images = [torch.rand(3, *size, device=device) * 255 for _ in range(batch)]

    def run() -> None:
        model.predict_labels(images, classifier, precision=dtype)

    elapsed, peak = timed(run, iters, device)
    return batch * iters / elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="san-vit-b16")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--height", type=int, default=640)
    parser.add_argument("--width", type=int, default=853)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = get_preset(args.model).config
    print(
        f"model {args.model} (random weights), input {args.height}x{args.width}, {len(VOCABULARY)} classes, "
        + environment()
    )
    print(f"| {'device':<6} | {'dtype':<5} | {'batch':>5} | {'images/s':>9} | {'peak memory (MiB)':>17} |")
    print(f"|{'-' * 8}|{'-' * 7}|{'-' * 7}|{'-' * 11}|{'-' * 19}|")
    for device, dtype in device_runs():
        model = build_model(config).to(device)
        classifier = model.class_embeddings(VOCABULARY)
        for batch in (1, 4):
            rate, peak = measure(model, classifier, device, batch, dtype, args.iters, (args.height, args.width))
            print(f"| {device:<6} | {dtype:<5} | {batch:>5} | {rate:>9.2f} | {peak:>17.0f} |", flush=True)
        del model
    print("CPU peak memory is the process's peak RSS (weights included); GPU peak is torch's max allocated.")


if __name__ == "__main__":
    main()

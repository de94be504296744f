"""The whole `san label` stream on a GPU node against the networks alone, measured in one run.

    python benchmarks/gpu_stream.py [--images 2400] [--runs bf16:32,fp32:32,bf16:32:1,bf16:8,fp32:8]
                                    [--baseline DIR] [--out DIR] [--budget-s 480]

On local Ray, with random `san-vit-b16` weights (saved as a checkpoint file, as production loads
one) and the ADE-150 vocabulary, it writes JPEGs of about 1.2 megapixels (scikit-image photos
enlarged to 896x1344, each a different crop and flip, quality 90) to local disk, then:

1. the networks alone (`SAN.forward` on images already decoded and resized, on the device) and
   the device's half of the job path (`label_maps`: networks, label maps, copies to the host),
   images/s per precision and batch size, in this process;
   (and, at the largest batch, with the label maps made image by image and tile by tile, as on
   a CPU, rather than a batch of one size at a time; the label maps alone on one batch's logits,
   through the fused kernel and through PyTorch, with the per-id sums apart; and, in bf16, the
   device's kernels by their time in one call, written to OUT/device_profile_*.txt);
2. for each run `PRECISION:BATCH[:ACTORS_PER_GPU]`, the complete labeling job
   (`pipeline.labeling.job.label`, what `san label` runs) in a fresh process with its defaults
   otherwise: images/s in steady state as rows reach Parquet (the rows of every file after the
   first, over the time from the first file to the last), the actors' own steady rate from the
   manifest, the GPU's utilisation sampled through NVML every 50 ms over the steady state, and
   Ray Data's per-stage stats (written to OUT/ray_data_stats.txt);
3. with --baseline DIR (an older checkout's files), that code's job at bf16 and batch 32, the
   same way;
4. nvJPEG (`torchvision.io.decode_jpeg` on the device) against Pillow's decode on one core.

It prints one table and writes it, with every figure as JSON, to --out. Runs that would start
after --budget-s seconds are skipped and say so. On a machine without a GPU it runs on the CPU
(a check of the script, not a figure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE = (896, 1344)  # (height, width): 1.2 Mpx, resized for the model to 640x960
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


# --- inputs ------------------------------------------------------------------------------------
def _write_jpeg(task: tuple[int, str]) -> None:
    import skimage.data
    from PIL import Image

    index, folder = task
    rng = np.random.default_rng(index)
    photo = Image.fromarray(getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()).convert("RGB")
    scale = rng.uniform(1.0, 1.3)
    big = photo.resize((int(SIZE[1] * scale) + 1, int(SIZE[0] * scale) + 1), Image.BILINEAR)
    top = int(rng.integers(0, big.height - SIZE[0] + 1))
    left = int(rng.integers(0, big.width - SIZE[1] + 1))
    crop = big.crop((left, top, left + SIZE[1], top + SIZE[0]))
    if index % 2:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    crop.save(Path(folder) / f"img{index:05d}.jpg", quality=90)


def write_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(_write_jpeg, [(i, str(folder)) for i in range(count)], chunksize=16))


def write_checkpoint(path: Path) -> None:
    import torch

    from san_core.build import build_model
    from san_core.checkpoint import save_checkpoint
    from san_core.presets import get_preset

    torch.manual_seed(0)
    config = get_preset("san-vit-b16").config
    save_checkpoint(build_model(config), config, str(path))


# --- 1. the networks alone and the device's half of the job path, in this process -------------
def _rate(run: Any, images: int, sync: Any, seconds: float = 4.0) -> float:
    run()
    sync()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        calls += 1
    sync()
    return calls * images / (time.perf_counter() - start)


def networks_alone(
    checkpoint: Path, images: Path, vocab_cache: Path, runs: list[dict], device: str, out: Path | None = None
) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from pipeline.labeling.inference import label_maps
    from pipeline.media.images import decode_for_model
    from pipeline.vocabulary import load_or_build_vocabulary
    from pipeline.weights import resolve_weights
    from schemas.jobs import ModelChoice
    from schemas.taxonomy import load_taxonomy

    torch.set_grad_enabled(False)
    model, _ = resolve_weights(ModelChoice(checkpoint=str(checkpoint)), {}, False).load(device)
    table = load_or_build_vocabulary(load_taxonomy("ade150"), model, str(vocab_cache))
    embeddings = torch.from_numpy(table.embeddings).to(device)
    class_ids = torch.from_numpy(table.class_ids.astype(np.int64)).to(device)
    files = sorted(images.glob("*.jpg"))[: max(r["batch"] for r in runs)]
    decoded = [decode_for_model(f.read_bytes(), 640, 2560) for f in files]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    found = {}
    for precision, batch in sorted({(r["precision"], r["batch"]) for r in runs}):
        pixels = [image for image, _ in decoded[:batch]]
        sizes = [size for _, size in decoded[:batch]]
        tensors = [torch.from_numpy(p).to(device).permute(2, 0, 1) for p in pixels]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def forward(tensors: list = tensors, precision: str = precision, model: Any = model) -> None:
            with model.inference_precision(precision):
                model(tensors, embeddings, table.background)

        def device_half(
            pixels: list = pixels, sizes: list = sizes, precision: str = precision, model: Any = model
        ) -> None:
            label_maps(model, pixels, sizes, embeddings, class_ids, table.background, precision)

        def by_tiles(
            pixels: list = pixels, sizes: list = sizes, precision: str = precision, model: Any = model
        ) -> None:
            label_maps(model, pixels, sizes, embeddings, class_ids, table.background, precision, batched=False)

        seconds = 4.0 if device == "cuda" else 0.1
        networks = _rate(forward, batch, sync, seconds)
        job_device = _rate(device_half, batch, sync, seconds)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        found[f"{precision}:{batch}"] = {"networks": networks, "device_half": job_device, "gpu_peak_gib": peak}
        if batch == max(r["batch"] for r in runs):  # the label maps image by image, tile by tile
            found[f"{precision}:{batch}"]["device_half_by_tiles"] = _rate(by_tiles, batch, sync, seconds)
            found[f"{precision}:{batch}"]["label_maps"] = label_map_breakdown(
                model, tensors, sizes, embeddings, class_ids, table.background, precision, sync, seconds
            )
            if device == "cuda" and precision == "bf16" and out is not None:
                kernel_profile(device_half, out / f"device_profile_{precision}_{batch}.txt")
        print(
            f"in-process {precision} batch {batch}: networks {networks:.1f} img/s, "
            f"networks + label maps {job_device:.1f} img/s",
            flush=True,
        )
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return found


def label_map_breakdown(
    model: Any,
    tensors: list,
    sizes: list,
    embeddings: Any,
    class_ids: Any,
    background: bool,
    precision: str,
    sync: Any,
    seconds: float,
) -> dict:
    """The device's work after the networks, on one batch's logits, ms per image: the label maps
    through the fused kernel and through PyTorch (`batched_label_maps`), the sums and maps
    collected per image (`collect_batch_on_device`), and how many pixels' labels the two ways
    tell apart (float rounding at near-ties only)."""

    from pipeline.labeling.inference import collect_batch_on_device, id_bins
    from san_core.postprocess import batched_label_maps

    ((indices, out, class_logits, mask_logits),) = list(
        model._by_padded_size(tensors, embeddings, background, precision)
    )
    size = (out.padded_size, out.input_sizes[0], sizes[0])
    images = len(indices)
    found: dict[str, Any] = {}

    def pytorch() -> Any:
        return batched_label_maps(class_logits, mask_logits, *size, background)

    ways = {"pytorch_ms": pytorch}
    if class_logits.is_cuda:
        from san_core.fused_label_maps import fused_label_maps

        def fused() -> Any:
            return fused_label_maps(class_logits, mask_logits, *size, background)

        ways["fused_ms"] = fused
    for name, way in ways.items():
        found[name] = 1000 / _rate(way, images, sync, seconds)
    labels = pytorch()
    bins = id_bins(class_ids)
    found["collect_ms"] = 1000 / _rate(lambda: collect_batch_on_device(labels, class_ids, bins), images, sync, seconds)
    if "fused_ms" in found:
        found["fused_vs_pytorch_labels_differ"] = float((ways["fused_ms"]().labels != labels.labels).float().mean())
    print(f"label maps, ms per image ({precision}, batch {images}): {json.dumps(found)}", flush=True)
    return found


def kernel_profile(run: Any, path: Path) -> None:
    """The device's kernels in one call of `run` (after a warm-up), by their total device time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    path.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70))


# --- 2. the whole job, in a fresh process ------------------------------------------------------
def stream_worker(root: str, spec: str) -> None:
    """Run the labeling job of `spec` (JSON: LabelJobConfig fields) with `root`'s code; print
    its manifest, Ray Data's stats and when the stream started, as one JSON line."""
    import pyarrow.parquet as pq

    sys.path.insert(0, root)
    from pipeline.labeling.job import label
    from schemas.jobs import LabelJobConfig
    from schemas.taxonomy import load_taxonomy

    config = LabelJobConfig(**json.loads(spec))
    summary = label(config, load_taxonomy(config.vocab), log_level="WARNING")
    # rows as they reached Parquet: the first file marks the end of start-up
    files = sorted(Path(config.output).glob("*.parquet"), key=lambda p: p.stat().st_mtime)
    written = {
        "first_file_at": files[0].stat().st_mtime,
        "last_file_at": files[-1].stat().st_mtime,
        "rows_after_first": sum(pq.read_metadata(p).num_rows for p in files[1:]),
        "files": len(files),
    }
    stats = getattr(summary, "stream_stats", "")
    print(json.dumps({"written": written, "manifest": summary.manifest, "stats": stats}), flush=True)


class GpuSampler:
    """NVML's GPU utilisation (percent of time a kernel ran) every `period` seconds, in a thread."""

    def __init__(self, period: float = 0.05) -> None:
        self.samples: list[tuple[float, int, float]] = []  # (time, utilisation %, memory GiB)
        self.period = period
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self._nvml = pynvml
        except Exception as e:  # no NVML (no GPU): nothing to sample
            print(f"no GPU utilisation: {e}", flush=True)
            self._nvml = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**30
            self.samples.append((time.time(), rates.gpu, memory))

    def __enter__(self) -> GpuSampler:
        if self._nvml is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._nvml is not None:
            self._thread.join()

    def between(self, start: float, end: float) -> tuple[float | None, float | None]:
        """Mean utilisation % and peak memory GiB of the samples in [start, end]."""
        chosen = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not chosen:
            return None, None
        return sum(u for u, _ in chosen) / len(chosen), max(m for _, m in chosen)


def run_stream(root: Path, spec: dict, out: Path, name: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--stream-worker", str(root), json.dumps(spec)]
    # the code under test first; what else the path held (packages installed beside) after it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    with GpuSampler() as sampler:
        done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=900, check=False)
    with (out / "streams.log").open("a") as f:  # every run's output, in one file
        f.write(f"===== {name} (exit {done.returncode}) =====\n{done.stdout[-20000:]}\n--- stderr ---\n")
        f.write(done.stderr[-20000:] + "\n")
    if done.returncode:
        raise RuntimeError(f"the {name} job failed (exit {done.returncode}): {done.stderr[-1500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    manifest, written = result["manifest"], result["written"]
    span = written["last_file_at"] - written["first_file_at"]
    utilisation, memory = sampler.between(written["first_file_at"], written["last_file_at"])
    with (out / "ray_data_stats.txt").open("a") as f:
        f.write(f"===== {name} =====\n{result['stats']}\n\n")
    return {
        "written_images_per_s": written["rows_after_first"] / span if span > 0 else None,
        "files": written["files"],
        "actors_steady_images_per_s": manifest.get("steady_images_per_s"),
        "images_per_s": manifest.get("images_per_s"),
        "startup_s": manifest.get("startup_s"),
        "stream_time_s": manifest["stream_time_s"],
        "labeled": manifest["counts"]["labeled"],
        "failed": manifest["counts"]["failed"],
        "actors": manifest.get("actors"),
        "actor_peak_rss_mib": manifest["peak_memory_mib"]["labeling_actor"],
        "gpu_utilisation_pct": utilisation,
        "gpu_memory_peak_gib": memory,
    }


# --- 4. JPEG decoding: nvJPEG on the device against Pillow on one core ------------------------
def jpeg_decoding(images: Path, device: str) -> dict:
    from PIL import Image

    files = sorted(images.glob("*.jpg"))[:256]
    data = [f.read_bytes() for f in files]
    start = time.process_time()
    for blob in data[:64]:
        import io

        Image.open(io.BytesIO(blob)).load()
    pillow_ms = (time.process_time() - start) / 64 * 1000
    found: dict[str, Any] = {"pillow_decode_cpu_ms": pillow_ms}
    if device != "cuda":
        return found
    import torch
    from torchvision.io import decode_jpeg

    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    decode_jpeg(tensors[:8], device="cuda")
    torch.cuda.synchronize()
    start = time.perf_counter()
    cpu = time.process_time()
    for _ in range(3):
        decode_jpeg(tensors, device="cuda")
    torch.cuda.synchronize()
    found["nvjpeg_images_per_s"] = 3 * len(tensors) / (time.perf_counter() - start)
    found["nvjpeg_host_cpu_ms"] = (time.process_time() - cpu) / (3 * len(tensors)) * 1000
    return found


# --- the driver --------------------------------------------------------------------------------
def run_name(run: dict) -> str:
    return f"{run['precision']}:{run['batch']}" + (f":{run['per_gpu']}" if run["per_gpu"] else "")


def parse_runs(text: str) -> list[dict]:
    runs = []
    for item in text.split(","):
        parts = item.split(":")
        runs.append(
            {"precision": parts[0], "batch": int(parts[1]), "per_gpu": int(parts[2]) if len(parts) > 2 else None}
        )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2400)
    parser.add_argument("--runs", default="bf16:32,fp32:32,bf16:32:1,bf16:8,fp32:8")
    parser.add_argument("--baseline", help="an older checkout's folder: its job at bf16, batch 32")
    parser.add_argument("--out", default=None, help="where the table, JSON and Ray Data stats go")
    parser.add_argument("--budget-s", type=float, default=480, help="start no run after this many seconds")
    parser.add_argument("--stream-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream_worker:
        stream_worker(*args.stream_worker)
        return
    import torch

    sys.path.insert(0, str(ROOT))  # run from a checkout that is not installed, as on a rented GPU node
    began = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "no GPU (CPU check)"
    runs = parse_runs(args.runs)
    with tempfile.TemporaryDirectory(prefix="gpu-stream-") as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        images, checkpoint, vocab_cache = Path(tmp) / "images", Path(tmp) / "random.safetensors", Path(tmp) / "vocab"
        write_images(images, args.images)
        write_checkpoint(checkpoint)
        print(f"{args.images} JPEGs, checkpoint written after {time.time() - began:.0f} s", flush=True)
        results: dict[str, Any] = {
            "gpu": gpu,
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "images": args.images,
        }
        results["in_process"] = networks_alone(checkpoint, images, vocab_cache, runs, device, out)
        (out / "gpu_stream.json").write_text(json.dumps(results, indent=2))
        streams = [(run_name(r), r, ROOT) for r in runs]
        if args.baseline:  # second, to be within the budget
            baseline_run = {"precision": "bf16", "batch": 32, "per_gpu": None}
            streams.insert(1, ("baseline bf16:32", baseline_run, Path(args.baseline)))
        results["streams"] = {}
        for name, run, root in streams:
            if time.time() - began > args.budget_s:
                print(f"{name}: skipped, past the {args.budget_s:.0f}-s budget", flush=True)
                continue
            spec = {
                "vocab": "ade150",
                "input": str(images),
                "output": str(Path(tmp) / f"labels-{len(results['streams'])}"),
                "weights": {"checkpoint": str(checkpoint)},
                "precision": run["precision"],
                "batch_size": run["batch"],
                "vocab_cache": str(vocab_cache),
            }
            if run["per_gpu"] and device == "cuda":
                spec["gpus_per_actor"] = 1.0 / run["per_gpu"]
            try:
                found = run_stream(root, spec, out, name.replace(" ", "_").replace(":", "-"))
            except Exception as e:
                print(f"{name}: {e}", flush=True)
                results["streams"][name] = {"error": str(e)[-2000:]}
                continue
            results["streams"][name] = found
            print(f"{name}: {json.dumps(found)}", flush=True)
            (out / "gpu_stream.json").write_text(json.dumps(results, indent=2))
        if time.time() - began < args.budget_s + 60:
            results["jpeg"] = jpeg_decoding(images, device)
            print(f"JPEG decoding: {results['jpeg']}", flush=True)
        (out / "gpu_stream.json").write_text(json.dumps(results, indent=2))
        table = render(results)
        (out / "gpu_stream.md").write_text(table)
        print(table)


def render(results: dict) -> str:
    lines = [
        f"{results['gpu']}, {results['cpus']} CPUs, torch {results['torch']}; {results['images']} JPEGs of "
        f"{SIZE[0]}x{SIZE[1]} on local disk, random san-vit-b16 weights, ADE-150",
        "",
        "In one process, images already decoded (per image: the label maps' time is what networks + label maps "
        "take beyond the networks):",
        "",
        "| precision:batch | networks alone, img/s | networks + label maps, img/s | label maps, ms/img "
        "| the same, image by image and tile by tile, img/s | GPU memory peak |",
        "|---|---|---|---|---|---|",
    ]
    for key, alone in results["in_process"].items():
        label_ms = 1000 / alone["device_half"] - 1000 / alone["networks"]
        tiles = f"{alone['device_half_by_tiles']:.0f}" if "device_half_by_tiles" in alone else "-"
        peak = f"{alone['gpu_peak_gib']:.1f} GiB" if alone.get("gpu_peak_gib") else "-"
        lines.append(
            f"| {key} | {alone['networks']:.0f} | {alone['device_half']:.0f} | {label_ms:.2f} | {tiles} | {peak} |"
        )
    breakdowns = {key: alone["label_maps"] for key, alone in results["in_process"].items() if "label_maps" in alone}
    if breakdowns:
        lines += [
            "",
            "The label maps alone, on one batch's logits, ms per image (fused: the Triton kernel the job uses on a "
            "GPU; PyTorch: `batched_label_maps`; collect: the per-id sums and maps):",
            "",
            "| precision:batch | fused | PyTorch | collect | labels that differ, fused against PyTorch |",
            "|---|---|---|---|---|",
        ]
        for key, found in breakdowns.items():
            fused = f"{found['fused_ms']:.2f}" if "fused_ms" in found else "-"
            differ = (
                f"{found['fused_vs_pytorch_labels_differ']:.2e}" if "fused_vs_pytorch_labels_differ" in found else "-"
            )
            lines.append(f"| {key} | {fused} | {found['pytorch_ms']:.2f} | {found['collect_ms']:.2f} | {differ} |")
    lines += [
        "",
        "The whole job (`label`, local Ray), images/s in steady state as rows reach Parquet:",
        "",
        "| run | actors (GPU each) | whole job, img/s | job / networks alone | job / networks + label maps "
        "| actors' own rate | GPU busy (NVML) | start-up s | GPU memory peak |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, found in results.get("streams", {}).items():
        key = ":".join(name.replace("baseline ", "").split(":")[:2])
        alone = results["in_process"].get(key, {})
        if "error" in found:
            lines.append(f"| {name} | failed: {found['error'][:120]} | | | | | | | |")
            continue
        actors = found.get("actors") or {}
        layout = "1 (1.0)"  # the baseline's one actor, which records no layout
        if actors:
            layout = f"{actors['concurrency'][-1]} ({actors['gpus_per_actor']})"
        steady = found["written_images_per_s"] or 0
        actors_rate = found["actors_steady_images_per_s"] or 0
        of_networks = f"{steady / alone['networks']:.0%}" if alone.get("networks") else "-"
        of_device = f"{steady / alone['device_half']:.0%}" if alone.get("device_half") else "-"
        busy = f"{found['gpu_utilisation_pct']:.0f}%" if found.get("gpu_utilisation_pct") is not None else "-"
        memory = f"{found['gpu_memory_peak_gib']:.1f} GiB" if found.get("gpu_memory_peak_gib") else "-"
        lines.append(
            f"| {name} | {layout} | {steady:.0f} | {of_networks} | {of_device} | {actors_rate:.0f} | {busy} "
            f"| {found['startup_s'] or 0:.1f} | {memory} |"
        )
    if "jpeg" in results:
        lines += ["", f"JPEG decoding: {json.dumps(results['jpeg'])}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

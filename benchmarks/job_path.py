"""The labeling job path against a baseline commit, measured in the same run (`make bench`).

    python benchmarks/job_path.py [--baseline d40f2e8] [--vocabs ade150,ade847] [--repeats 3]
    python benchmarks/job_path.py --device cuda --batches 1,8,32     # on a GPU machine

CPU mode: the baseline commit is unpacked with `git archive` into a temporary folder and runs in
its own worker process beside a worker of this checkout; both load the same random `san-vit-b16`
weights (speed does not depend on the values) and the same vocabulary embeddings, and the driver
asks them in turn, so a noisy machine slows both alike. For each photo (scikit-image's
astronaut, coffee and chelsea at short side 640) and vocabulary it prints the fastest seconds per
image of the model alone (the networks, `SAN.forward`) and of the job path (uint8 pixels to the
label map PNG and segments, what an actor runs per image), fp32 and bf16 (where the CPU has native
bf16, or with --bf16 yes), the speed-ups over the baseline's fp32 job path, whether the label maps
equal the baseline's pixel for pixel, and the peak RSS of the worker over those runs. The
baseline's model alone is timed too, and the fp32 ceiling: the baseline's job path over this
checkout's model alone, the speed-up an fp32 job path would reach if nothing after the networks
took any time.

Confidence mode (--confidence): the part of the job path after the networks (label-map tiles,
assembling the map, PNG and segments), on the model's outputs computed once, for the baseline and
this checkout (which adds the top-two margins, and with --uncertainty-map their PNG), beside the
networks' time: what computing confidence costs.

GPU mode: images/s of the job path at batch sizes 1, 8 and 32 (equal-sized photos batched
together, as the actors do), fp32 and bf16, against the card's measured bf16 matrix-product rate.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea")
MODEL = "san-vit-b16"


# --- the worker: runs inside one code version (this checkout or the baseline's files) ----------
def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the kernel's peak-RSS counter


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Worker:
    """One code version's model and job path. The job path is called the way that version's
    labeling actor calls it (the baseline predates `label_images`)."""

    def __init__(self, root: str, weights: str, device: str) -> None:
        import torch

        from san_core.build import build_model
        from san_core.presets import get_preset

        torch.set_grad_enabled(False)
        self.torch = torch
        self.device = device
        model = build_model(get_preset(MODEL).config)
        model.load_state_dict(torch.load(weights, weights_only=True))
        self.model = model.eval().to(device)
        self.has_label_images = (Path(root) / "pipeline" / "labeling" / "inference.py").exists()

    def _autocast(self, precision: str):  # noqa: ANN202
        """The context the version's own job path runs its networks in (the baseline: autocast)."""
        if hasattr(self.model, "inference_precision"):
            return self.model.inference_precision(precision)
        return self.torch.autocast(self.device, dtype=self.torch.bfloat16, enabled=precision == "bf16")

    def model_only(self, images: list, embeddings: Any, precision: str) -> None:
        tensors = [self.torch.from_numpy(i).to(self.device).permute(2, 0, 1).float() for i in images]
        with self._autocast(precision):
            self.model(tensors, embeddings, True)

    def after_model(self, outputs: Any, size: tuple, class_ids: Any, names: dict, uncertainty_map: bool) -> Any:
        """From the networks' outputs to what a row stores: label-map tiles, the assembled map,
        its PNG and segments (and, where this version has them, confidence and margin map)."""
        from pipeline.labeling.inference import assemble_label_map

        extra = {"uncertainty_map": True} if uncertainty_map else {}
        return assemble_label_map(self.label_tiles(outputs, 0, size), size, class_ids, names, **extra)

    @staticmethod
    def label_tiles(outputs: Any, index: int, size: tuple) -> Any:
        """The label-map tiles of image `index` of a batch's outputs, at `size` (logits in fp32,
        as the job path makes its label maps)."""
        from san_core.postprocess import semantic_label_tiles

        return semantic_label_tiles(
            outputs.class_logits[index].float(),
            outputs.mask_logits[index].float(),
            outputs.padded_size,
            outputs.input_sizes[index],
            size,
        )

    def stages(self, images: list, embeddings: Any, class_ids: Any, names: dict, precision: str) -> dict:
        """The job path's stages one after another in one call, seconds each: the networks; the
        label maps (tiles on the device, assembled on the host with their confidence sums); the
        host's PNG and segments. (`label_images` overlaps the last with the next image's work.)"""
        from pipeline.labeling.inference import collect_label_map

        sync = self.torch.cuda.synchronize if self.device == "cuda" else (lambda: None)
        start = time.perf_counter()
        tensors = [self.torch.from_numpy(i).to(self.device).permute(2, 0, 1).float() for i in images]
        with self._autocast(precision):
            outputs = self.model(tensors, embeddings, True)
        sync()
        networks = time.perf_counter()
        collected = [
            collect_label_map(self.label_tiles(outputs, index, image.shape[:2]), image.shape[:2], class_ids)
            for index, image in enumerate(images)
        ]
        label_maps = time.perf_counter()
        for label_map in collected:
            label_map.labeled_image(names)
        host = time.perf_counter()
        return {"networks": networks - start, "label map": label_maps - networks, "host": host - label_maps}

    def job(self, images: list, embeddings: Any, class_ids: Any, names: dict, precision: str) -> list[bytes]:
        """The label-map PNGs of the job path; precision is the model's (bf16 autocast)."""
        import numpy as np

        sizes = [i.shape[:2] for i in images]
        if self.has_label_images:
            from pipeline.labeling.inference import label_images

            results = label_images(self.model, images, sizes, embeddings, class_ids, names, True, precision)
            return [r.label_map_png for r in results]
        from pipeline.postprocess import encode_label_png, segments_from_label_map

        tensors = [self.torch.from_numpy(np.ascontiguousarray(i)).to(self.device).permute(2, 0, 1) for i in images]
        with self._autocast(precision):
            results = self.model.predict_labels([t.float() for t in tensors], embeddings, sizes, background=True)
        pngs = []
        for indices, scores in results:
            label_map = class_ids[indices].cpu().numpy().astype(np.uint16)
            pngs.append(encode_label_png(label_map))
            segments_from_label_map(label_map, scores.float().cpu().numpy(), names)
        return pngs


def label_map_digest(png: bytes) -> str:
    """The SHA-256 of a 16-bit label-map PNG's pixels (decoded outside the timing: the job path
    writes its PNGs, it does not read them back)."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)), dtype=np.uint16)
    return hashlib.sha256(pixels.tobytes()).hexdigest()


def _best_seconds(run: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> tuple[float, Any]:
    result = run()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        sync()
        times.append(time.perf_counter() - start)
    return min(times), result


def worker_main(root: str, weights: str, data: str, device: str) -> None:
    """Answer timing requests, one JSON line in and one out, until stdin closes."""
    import numpy as np
    import torch

    import san_core

    if Path(san_core.__file__).resolve().parents[1] != Path(root).resolve():
        raise RuntimeError(f"worker for {root} imported {san_core.__file__}")
    worker = Worker(root, weights, device)
    vocabularies = torch.load(Path(data) / "vocabularies.pt", weights_only=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        images = [np.load(Path(data) / f"{request['photo']}.npy")] * request.get("batch", 1)
        embeddings = vocabularies[request["vocab"]].to(device)
        class_ids = torch.arange(embeddings.shape[0] + 1, device=device)[1:]
        names = {i + 1: f"class {i}" for i in range(embeddings.shape[0])}
        _reset_peak_rss()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        extra: dict[str, Any] = {}  # what a mode answers besides these
        if request["mode"] == "after model":
            tensors = [torch.from_numpy(i).permute(2, 0, 1).float() for i in images[:1]]
            outputs = worker.model(tensors, embeddings, True)
            run = partial(
                worker.after_model, outputs, images[0].shape[:2], class_ids, names, request["uncertainty_map"]
            )
            seconds, _ = _best_seconds(run, request["repeats"], sync)
            digest = None
        elif request["mode"] == "stages":
            run = partial(worker.stages, images, embeddings, class_ids, names, request["precision"])
            run()  # warm-up
            timings = [run() for _ in range(request["repeats"])]
            extra["stages"] = {name: min(t[name] for t in timings) for name in timings[0]}
            seconds, digest = min(sum(t.values()) for t in timings), None
        elif request["mode"] == "model":
            seconds, _ = _best_seconds(
                partial(worker.model_only, images, embeddings, request["precision"]), request["repeats"], sync
            )
            digest = None
        else:
            run = partial(worker.job, images, embeddings, class_ids, names, request["precision"])
            seconds, pngs = _best_seconds(run, request["repeats"], sync)
            digest = label_map_digest(pngs[0])
        answer = {"seconds": seconds, "digest": digest, "peak_rss_mib": _peak_rss_mib(), **extra}
        if device == "cuda":
            answer["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(json.dumps(answer), flush=True)


# --- the driver ------------------------------------------------------------------------------
class WorkerProcess:
    def __init__(self, root: Path, weights: Path, data: Path, device: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(root)]
        command += ["--weights", str(weights), "--data", str(data), "--device", device]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"worker exited with {self.process.wait()}")
        return json.loads(line)

    def ask(self, **request: Any) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait()


def prepare(data: Path, vocabs: list[str], short_side: int, photos: tuple[str, ...]) -> Path:
    """Random weights, vocabulary embeddings and resized photos, shared by every worker."""
    import numpy as np
    import skimage.data
    import torch

    from pipeline.media.images import resize_short_side
    from san_core.build import build_model
    from san_core.presets import get_preset
    from schemas.taxonomy import load_taxonomy

    torch.manual_seed(0)
    model = build_model(get_preset(MODEL).config).eval()
    weights = data / "weights.pt"
    torch.save(model.state_dict(), weights)
    vocabularies = {}
    with torch.no_grad():
        for name in vocabs:
            classes = [c.name for c in load_taxonomy(name).classes]
            # one template: the embeddings' values do not change the speed, and building 847
            # classes with every reference template would take minutes on a CPU
            vocabularies[name] = model.class_embeddings(classes, templates=["a photo of a {}."])
    torch.save(vocabularies, data / "vocabularies.pt")
    for photo in photos:
        rgb = getattr(skimage.data, photo)()[..., :3]
        np.save(data / f"{photo}.npy", np.ascontiguousarray(resize_short_side(rgb, short_side)))
    return weights


def unpack(commit: str, directory: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return directory


def cpu_table(args: argparse.Namespace, data: Path, weights: Path) -> None:
    import numpy as np

    from san_core.precision import cpu_runs_bf16_natively

    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and cpu_runs_bf16_natively())
    if not bf16:
        print("bf16 not measured: this CPU has no native bf16 (AVX-512 BF16, AMX); autocast would emulate it")
    baseline = WorkerProcess(unpack(args.baseline, data / "baseline"), weights, data, "cpu")
    current = WorkerProcess(ROOT, weights, data, "cpu")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"baseline {args.baseline} against this checkout ({head.stdout.strip()} plus any uncommitted change)")
    print(
        f"| photo | vocabulary | {args.baseline} model fp32 | {args.baseline} job fp32 | model fp32 | job fp32 | "
        "model bf16 | job bf16 | fp32 speed-up | fp32 ceiling | bf16 speed-up | labels equal | "
        "peak RSS MiB (base / now) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for vocab in args.vocabs.split(","):
        for photo in PHOTOS:
            size = np.load(data / f"{photo}.npy").shape
            times: dict[str, list[float]] = {}
            digests: dict[str, str] = {}
            peaks = {"base": 0.0, "now": 0.0}
            runs = [
                ("base model fp32", baseline, "model", "fp32"),
                ("base job fp32", baseline, "job", "fp32"),
                ("model fp32", current, "model", "fp32"),
                ("job fp32", current, "job", "fp32"),
            ]
            if bf16:
                runs += [("model bf16", current, "model", "bf16"), ("job bf16", current, "job", "bf16")]
            for round_ in range(args.rounds):  # interleaved, in ABBA order: drift hits both alike
                for key, worker, mode, precision in runs if round_ % 2 == 0 else runs[::-1]:
                    answer = worker.ask(photo=photo, vocab=vocab, mode=mode, precision=precision, repeats=args.repeats)
                    times.setdefault(key, []).append(answer["seconds"])
                    if answer["digest"]:
                        digests[key] = answer["digest"]
                    side = "base" if worker is baseline else "now"
                    peaks[side] = max(peaks[side], answer["peak_rss_mib"])
            t = {key: min(values) for key, values in times.items()}  # noise only ever adds time
            bf16_cells = (
                f"{t['model bf16']:.2f} | {t['job bf16']:.2f}" if bf16 else "- | -",
                f"{t['base job fp32'] / t['job bf16']:.2f}x" if bf16 else "-",
            )
            print(
                f"| {photo} {size[1]}x{size[0]} | {vocab} | {t['base model fp32']:.2f} | {t['base job fp32']:.2f} | "
                f"{t['model fp32']:.2f} | {t['job fp32']:.2f} | {bf16_cells[0]} | "
                f"{t['base job fp32'] / t['job fp32']:.2f}x | {t['base job fp32'] / t['model fp32']:.2f}x | "
                f"{bf16_cells[1]} | "
                f"{'yes' if digests['job fp32'] == digests['base job fp32'] else 'NO'} | "
                f"{peaks['base']:.0f} / {peaks['now']:.0f} |",
                flush=True,
            )
    baseline.close()
    current.close()


def confidence_table(args: argparse.Namespace, data: Path, weights: Path) -> None:
    """The job path after the networks, baseline against now, beside the networks' own time."""
    baseline = WorkerProcess(unpack(args.baseline, data / "baseline"), weights, data, "cpu")
    current = WorkerProcess(ROOT, weights, data, "cpu")
    print("after the networks (label map, PNG, segments; now also confidence), seconds per image, fp32, CPU")
    print(
        f"| photo | vocabulary | networks | {args.baseline} | now | now, --uncertainty-map | "
        "cost (now - base) / (networks + base) | with the map |"
    )
    print("|---|---|---|---|---|---|---|---|")
    runs = [
        ("base", baseline, {"mode": "after model", "uncertainty_map": False}),
        ("now", current, {"mode": "after model", "uncertainty_map": False}),
        ("map", current, {"mode": "after model", "uncertainty_map": True}),
        ("networks", current, {"mode": "model", "precision": "fp32"}),
    ]
    for vocab in args.vocabs.split(","):
        for photo in PHOTOS:
            times: dict[str, list[float]] = {}
            for round_ in range(args.rounds):
                for key, worker, request in runs if round_ % 2 == 0 else runs[::-1]:
                    answer = worker.ask(photo=photo, vocab=vocab, repeats=args.repeats, **request)
                    times.setdefault(key, []).append(answer["seconds"])
            t = {key: min(values) for key, values in times.items()}
            whole = t["networks"] + t["base"]
            print(
                f"| {photo} | {vocab} | {t['networks']:.3f} | {t['base']:.3f} | {t['now']:.3f} | {t['map']:.3f} | "
                f"{(t['now'] - t['base']) / whole:+.1%} | {(t['map'] - t['base']) / whole:+.1%} |",
                flush=True,
            )
    baseline.close()
    current.close()


def gpu_peak_tflops() -> float:
    """bf16 TFLOP/s of the best of ten 8192^3 matrix products on the GPU."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * 8192**3 / best / 1e12


def flop_per_image(data: Path, weights: Path, vocab: str, photo: str) -> float:
    """FLOPs of one image's job path, counted on the CPU by FlopCounterMode (matrix products,
    convolutions, attention; element-wise work is not counted)."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    worker = Worker(str(ROOT), str(weights), "cpu")
    embeddings = torch.load(data / "vocabularies.pt", weights_only=True)[vocab]
    names = {i + 1: f"class {i}" for i in range(embeddings.shape[0])}
    counter = FlopCounterMode(display=False)
    with counter:
        worker.job([np.load(data / f"{photo}.npy")], embeddings, torch.arange(1, len(names) + 1), names, "fp32")
    return counter.get_total_flops()


def gpu_table(args: argparse.Namespace, data: Path, weights: Path) -> None:
    import torch

    peak = gpu_peak_tflops()
    current = WorkerProcess(ROOT, weights, data, "cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; bf16 matrix-product peak {peak:.0f} TFLOP/s")
    print(
        "| photo | vocabulary | batch | precision | model images/s | job images/s | job TFLOP/s | % of bf16 peak "
        "| GPU peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for vocab in args.vocabs.split(","):
        for photo in PHOTOS:
            flop = flop_per_image(data, weights, vocab, photo)
            for batch in (int(b) for b in (args.batches or "1,8,32").split(",")):
                for precision in ("fp32", "bf16"):
                    request = {"photo": photo, "vocab": vocab, "precision": precision, "repeats": args.repeats}
                    model = current.ask(mode="model", batch=batch, **request)
                    job = current.ask(mode="job", batch=batch, **request)
                    rate = batch / job["seconds"]
                    achieved = rate * flop / 1e12
                    print(
                        f"| {photo} | {vocab} | {batch} | {precision} | {batch / model['seconds']:.1f} | {rate:.1f} | "
                        f"{achieved:.1f} | {achieved / peak:.1%} | {job['gpu_peak_gib']:.1f} |",
                        flush=True,
                    )
    current.close()


def breakdown_table(args: argparse.Namespace, data: Path, weights: Path) -> None:
    """Where a batch's time goes, milliseconds per image: each stage timed on its own inside one
    call (`Worker.stages`), and the job path as the actors run it (`label_images`, whose threads
    overlap the host's work with the device's), in interleaved rounds, the fastest of each."""
    from san_core.precision import cpu_runs_bf16_natively

    current = WorkerProcess(ROOT, weights, data, args.device)
    precisions = ["fp32"]
    if args.device == "cuda" or args.bf16 == "yes" or (args.bf16 == "auto" and cpu_runs_bf16_natively()):
        precisions.append("bf16")
    else:
        print("bf16 not measured: this CPU has no native bf16 (AVX-512 BF16, AMX); autocast would emulate it")
    batches = args.batches or ("1,8,32" if args.device == "cuda" else "1")
    print(f"where the job path's time goes, {args.device}, milliseconds per image, fastest of {args.rounds} rounds")
    print("| photo | vocabulary | batch | precision | networks | label map | host: PNG, segments | job |")
    print("|---|---|---|---|---|---|---|---|")
    for vocab in args.vocabs.split(","):
        for photo in PHOTOS:
            for batch in (int(b) for b in batches.split(",")):
                for precision in precisions:
                    request = {"photo": photo, "vocab": vocab, "precision": precision, "repeats": args.repeats}
                    stages: dict[str, list[float]] = {}
                    jobs = []
                    for _ in range(args.rounds):
                        answer = current.ask(mode="stages", batch=batch, **request)["stages"]
                        for name, seconds in answer.items():
                            stages.setdefault(name, []).append(seconds * 1e3 / batch)
                        jobs.append(current.ask(mode="job", batch=batch, **request)["seconds"] * 1e3 / batch)
                    ms = {name: min(values) for name, values in stages.items()}
                    print(
                        f"| {photo} | {vocab} | {batch} | {precision} | {ms['networks']:.1f} | {ms['label map']:.1f} | "
                        f"{ms['host']:.1f} | {min(jobs):.1f} |",
                        flush=True,
                    )
    current.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="d40f2e8")
    parser.add_argument("--vocabs", default="ade150,ade847")
    parser.add_argument("--short-side", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per request (after a warm-up)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the table holds the fastest")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bf16", default="auto", choices=("auto", "yes", "no"), help="CPU: auto = if native")
    parser.add_argument("--batches", help="GPU table and breakdown; default 1,8,32 on a GPU, 1 on the CPU")
    parser.add_argument("--breakdown", action="store_true", help="where the time goes, per stage")
    parser.add_argument("--confidence", action="store_true", help="what confidence costs after the networks")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.weights, args.data, args.device)
        return
    sys.path.insert(0, str(ROOT))
    import torch

    print(f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, torch {torch.__version__}; {MODEL}")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        weights = prepare(data, args.vocabs.split(","), args.short_side, PHOTOS)
        if args.breakdown:
            breakdown_table(args, data, weights)
        elif args.confidence:
            confidence_table(args, data, weights)
        elif args.device == "cuda":
            gpu_table(args, data, weights)
        else:
            cpu_table(args, data, weights)


if __name__ == "__main__":
    main()

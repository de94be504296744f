"""The host's share of an image: CPU milliseconds per image of every labeling stage outside the
networks, single-threaded, for this checkout and a baseline commit in the same run.

    python benchmarks/host_cost.py [--baseline HEAD] [--repeats 7]

Photos of about 1.2 megapixels (scikit-image's, enlarged and saved as JPEG at quality 90) go
through what a labeling run does to them on CPUs: read, decode and resize to short side 640
(`load_images`); then, from label maps at the original size, the label-map PNG, the segments
(COCO RLE, bbox, area), the confidence and the row in the output's Arrow schema (the baseline in
its actor, as it did; this checkout through the actor's hand-off table and the encoding task),
and the Parquet write. The label maps are real outputs of the model: `san-vit-b16` with random
weights and the ADE-150 vocabulary built by its own text tower, labelled by the job path. Random
weights make flat, blobby maps with few classes, so each photo is also measured with a map of
many regions: scikit-image's felzenszwalb segments of the photo, in 40 classes.

Each code version runs in its own worker process (the baseline unpacked with `git archive`),
with one thread for PyTorch, OpenMP and everything else; each stage's CPU time
(`time.process_time`) is the least over the repeats; reading and the rows are taken a batch at a
time (32 images, the GPU batch), as the stream's tasks take them. A second table gives this checkout's
label-map PNG against other encoders and settings: milliseconds and bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# scikit-image photo -> the size it is enlarged to (about 1.2 megapixels, the photos' aspect)
PHOTOS = {"astronaut": (1100, 1100), "coffee": (896, 1344), "chelsea": (896, 1347)}
BUSY_CLASSES = 40
ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")}


# --- inputs, made once by the driver ----------------------------------------------------------
def write_inputs(folder: Path) -> list[str]:
    """The JPEGs, and per photo two label maps with their confidence sums (.npz): the model's
    (random weights) and the many-region one."""
    import skimage.data
    import skimage.segmentation
    import torch
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from pipeline.labeling.inference import label_maps
    from pipeline.media.images import decode_for_model
    from pipeline.vocabulary import load_or_build_vocabulary
    from san_core.build import build_model
    from san_core.presets import get_preset
    from schemas.taxonomy import load_taxonomy

    torch.manual_seed(0)
    model = build_model(get_preset("san-vit-b16").config).eval()
    taxonomy = load_taxonomy("ade150")
    table = load_or_build_vocabulary(taxonomy, model, cache_dir=None)
    embeddings = torch.from_numpy(table.embeddings)
    class_ids = torch.from_numpy(table.class_ids.astype(np.int64))
    names = []
    for photo, (height, width) in PHOTOS.items():
        rgb = np.asarray(Image.fromarray(getattr(skimage.data, photo)()).convert("RGB").resize((width, height)))
        path = folder / f"{photo}.jpg"
        Image.fromarray(rgb).save(path, quality=90)
        resized, size = decode_for_model(path.read_bytes(), 640, 2560)
        (model_map,) = label_maps(model, [resized], [size], embeddings, class_ids, table.background)
        regions = skimage.segmentation.felzenszwalb(rgb, scale=400, sigma=0.8, min_size=200)
        busy = (regions % BUSY_CLASSES + 1).astype(np.uint16)
        rng = np.random.default_rng(0)
        busy_sums = np.bincount(busy.ravel(), minlength=model_map.score_sums.size) * rng.uniform(0.2, 1.0)
        for kind, label_map, sums in (
            ("model", model_map.label_map, model_map.score_sums),
            ("regions", busy, busy_sums),
        ):
            np.savez(folder / f"{photo}-{kind}.npz", label_map=label_map, score_sums=sums, margin_sums=sums * 0.5)
            names.append(f"{photo}-{kind}")
    return names


# --- the worker: runs inside one code version (this checkout or the baseline's files) ----------
def _least_cpu_ms(run: Callable[[], Any], repeats: int, images: int = 1) -> tuple[float, Any]:
    """The least CPU time of `run` over the repeats, in ms per image of the `images` it handles."""
    result = run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        result = run()
        best = min(best, time.process_time() - start)
    return best * 1000 / images, result


def worker_main(root: str, data: str, repeats: int, batch: int) -> None:
    """Print one JSON line: per map, each stage's CPU ms per image."""
    import torch

    import pipeline

    if Path(pipeline.__file__).resolve().parents[1] != Path(root).resolve():
        raise RuntimeError(f"worker for {root} imported {pipeline.__file__}")
    torch.set_num_threads(1)
    results = {npz.stem: stage_times(npz, repeats, batch) for npz in sorted(Path(data).glob("*.npz"))}
    print(json.dumps(results), flush=True)


def stage_times(npz: Path, repeats: int, batch: int) -> dict[str, Any]:
    """One map's stages, as the code version this process imports runs them: reading and the
    rows a batch of `batch` images at a time (as the stream's tasks take them), per image."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.labeling.segments import segments_from_label_map
    from pipeline.masks.label_maps import encode_label_png
    from pipeline.media.images import load_images
    from schemas.output import LabelRow, Provenance, TaxonomyRef, label_row_schema

    root = Path(load_images.__code__.co_filename).parents[1]
    split = (root / "pipeline" / "labeling" / "encode.py").exists()  # the actor hands off raw arrays
    provenance = Provenance(
        project_version="benchmark",
        model_id="san-vit-b16",
        weights_digest=None,
        model_config_digest="0" * 64,
        taxonomy=TaxonomyRef(name="ade150", version="1", digest="0" * 64),
        short_side=640,
        max_long_side=2560,
    )
    names = {i: f"class {i}" for i in range(1, 1000)}
    shared = {"model_id": "san-vit-b16", "checkpoint_digest": None, "taxonomy_digest": "0" * 64}
    stored = np.load(npz)
    label_map = stored["label_map"]
    height, width = label_map.shape
    sums, margins = stored["score_sums"], stored["margin_sums"]
    uri = str(npz.parent / f"{npz.stem.split('-')[0]}.jpg")
    times = {}
    load_args = {"short_side": 640, "max_long_side": 2560, "max_pixels": 100_000_000}
    uris = {"image_uri": [uri] * batch}
    times["read, decode, resize"], _ = _least_cpu_ms(lambda: load_images(uris, **load_args), repeats, batch)
    times["label-map PNG"], png = _least_cpu_ms(lambda: encode_label_png(label_map), repeats)
    as_sums = sums if split else dict(enumerate(sums.tolist()))
    as_margins = margins if split else dict(enumerate(margins.tolist()))
    times["segments"], segments = _least_cpu_ms(
        lambda: segments_from_label_map(label_map, as_sums, names, as_margins), repeats
    )
    if split:
        from pipeline.labeling.encode import device_table, encode_rows
        from pipeline.labeling.inference import LabelMapArrays

        # the posterior's sums since schema 5 (the margins stand in: same shape, same cost)
        posterior = {"confidence_sums": margins} if "confidence_sums" in LabelMapArrays.__dataclass_fields__ else {}
        arrays = LabelMapArrays(label_map, sums, margins, 0, None, **posterior)
        loaded = {"image_uri": [uri] * batch, "height": [height] * batch, "width": [width] * batch}

        def rows() -> pa.Table:
            # the actor's hand-off table, then the encoding task
            handed = device_table(loaded, [None] * batch, [None] * batch, dict.fromkeys(range(batch), arrays))
            return encode_rows(handed, names, provenance, "run")
    else:
        from pipeline.labeling.inference import CollectedMap
        from pipeline.labeling.stages import row_fields

        collected = CollectedMap(label_map, as_sums, as_margins, 0, None)

        def rows() -> pa.Table:
            # what the baseline's actor did: each row's fields, LabelRow, the batch's Arrow table
            made = []
            for _ in range(batch):
                fields = row_fields(collected.labeled_image(names))
                row = LabelRow(image_uri=uri, width=width, height=height, error=None, **fields, **shared)
                made.append(row.model_dump())
            return pa.Table.from_pylist(made, schema=label_row_schema(provenance, "run"))

    encoding = "PNG, segments, row (the encoding)"
    times[encoding], table = _least_cpu_ms(rows, repeats, batch)
    times["row alone"] = times[encoding] - times["label-map PNG"] - times["segments"]
    times["Parquet write"], _ = _least_cpu_ms(lambda: pq.write_table(table, io.BytesIO()), repeats, batch)
    times["all"] = times["read, decode, resize"] + times[encoding] + times["Parquet write"]
    return {"ms": times, "png_bytes": len(png), "segments": len(segments)}


# --- the driver --------------------------------------------------------------------------------
def run_worker(root: Path, data: Path, repeats: int, batch: int) -> dict:
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(root)}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(root), "--data", str(data)]
    command += ["--repeats", str(repeats), "--batch", str(batch)]
    done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"worker for {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def unpack(commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def png_encoders(data: Path, repeats: int) -> list[tuple[str, dict[str, tuple[float, int]]]]:
    """This checkout's label-map PNG against Pillow's and other deflate settings: (ms, bytes) per map."""
    from isal import isal_zlib
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    import pipeline.masks.label_maps as codec

    def pillow(**options: Any) -> Callable[[np.ndarray], bytes]:
        def encode(label_map: np.ndarray) -> bytes:
            values = np.ascontiguousarray(label_map, dtype="<u2")
            image = Image.frombuffer("I;16", values.shape[::-1], values, "raw", "I;16", 0, 1)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", **options)
            return buffer.getvalue()

        return encode

    def up_filter(compressor: Callable[[], Any]) -> Callable[[np.ndarray], bytes]:
        def encode(label_map: np.ndarray) -> bytes:
            values = label_map.astype(np.uint16, copy=False)
            return codec.png_file(values, codec.deflated_rows(values, compressor()))

        return encode

    encoders = {
        "this checkout: filter Up, ISA-L level 1": codec.encode_label_png,
        "filter Up, ISA-L level 3": up_filter(lambda: isal_zlib.compressobj(3)),
        "filter Up, zlib level 1": up_filter(lambda: zlib.compressobj(1)),
        "filter Up, zlib level 6": up_filter(lambda: zlib.compressobj(6)),
        "Pillow, level 6 (the baseline's)": pillow(),
        "Pillow, level 1": pillow(compress_level=1),
        "Pillow, Z_RLE": pillow(compress_type=zlib.Z_RLE),
    }
    table = []
    for name, encode in encoders.items():
        row = {}
        for npz in sorted(data.glob("*.npz")):
            label_map = np.load(npz)["label_map"]
            ms, png = _least_cpu_ms(partial(encode, label_map), repeats)
            if not np.array_equal(codec.decode_label_map(png), label_map):
                raise AssertionError(f"{name} does not round-trip {npz.stem}")
            row[npz.stem] = (ms, len(png))
        table.append((name, row))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="the commit to compare with (default: HEAD)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32, help="images a task reads or encodes at once")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker, args.data, args.repeats, args.batch)
        return
    baseline = subprocess.run(
        ["git", "rev-parse", "--short", args.baseline], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="host-cost-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        os.environ.update(ONE_THREAD)
        maps = write_inputs(data)
        before = run_worker(unpack(baseline, Path(tmp) / "baseline"), data, args.repeats, args.batch)
        now = run_worker(ROOT, data, args.repeats, args.batch)
        encoders = png_encoders(data, args.repeats)
    print(
        f"CPU ms per image, one thread, least of {args.repeats}, reading and rows {args.batch} images at a time; "
        f"{baseline} = the baseline, now = this checkout (with its uncommitted changes); JPEGs of about 1.2 Mpx "
        "at quality 90, label maps at that size"
    )
    stages = list(next(iter(now.values()))["ms"])
    print("| stage | " + " | ".join(f"{m} {baseline} | {m} now" for m in maps) + " |")
    print("|---|" + "---|---|" * len(maps))
    for stage in stages:
        cells = [f"{before[m]['ms'][stage]:.1f} | {now[m]['ms'][stage]:.1f}" for m in maps]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    cells = [f"{before[m]['png_bytes']:,} | {now[m]['png_bytes']:,}" for m in maps]
    print("| label-map PNG bytes | " + " | ".join(cells) + " |")
    print("| segments | " + " | ".join(f"{now[m]['segments']} | {now[m]['segments']}" for m in maps) + " |")
    print()
    print("Label-map PNG encoders, CPU ms / bytes per map (every one decodes to the same map)")
    print("| encoder | " + " | ".join(maps) + " |")
    print("|---|" + "---|" * len(maps))
    for name, row in encoders:
        print(f"| {name} | " + " | ".join(f"{row[m][0]:.2f} / {row[m][1]:,}" for m in maps) + " |")


if __name__ == "__main__":
    main()

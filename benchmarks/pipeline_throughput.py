"""Does the pipeline keep the model busy? Images/s of (a) the model alone on pre-decoded images
and (b) the whole labeling stream from storage to Parquet, on the same images.

    python benchmarks/pipeline_throughput.py [--models tiny,san-vit-b16] [--images 24] [--precision bf16]

(a) times `SAN.predict_labels` plus label-map post-processing on images already decoded and
resized in memory, with all CPU threads; (b) runs the labeling job (local Ray, one actor) on the
same images saved as JPEG files and times its stream (load -> decode -> resize -> actors ->
Parquet, actor start-up included). san-vit-b16 uses random weights saved as a project-format
checkpoint (speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.labeling.inference import label_images  # noqa: E402
from pipeline.media.images import decode_rgb, resize_short_side  # noqa: E402
from pipeline.vocabulary import load_or_build_vocabulary  # noqa: E402
from schemas.jobs import LabelJobConfig, ModelChoice  # noqa: E402
from schemas.taxonomy import load_taxonomy  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "parity" / "tiny_a"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def write_images(directory: Path, count: int) -> list[Path]:
    import skimage.data

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        photo = getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()[i % 5 :, i % 3 :]
        path = directory / f"img{i:04d}.jpg"
        Image.fromarray(photo).save(path, quality=90)
        paths.append(path)
    return paths


def weights_for(name: str, directory: Path) -> ModelChoice:
    """The tiny parity model, or a preset with random weights saved in the project format (so the
    actors load a checkpoint file, as in production)."""
    if name == "tiny":
        return ModelChoice(checkpoint=str(TINY / "checkpoint.pth"), model_config_uri=str(TINY / "config.json"))
    from san_core.build import build_model
    from san_core.checkpoint import save_checkpoint
    from san_core.presets import get_preset

    torch.manual_seed(0)
    config = get_preset(name).config
    path = directory / f"{name}-random.safetensors"
    save_checkpoint(build_model(config), config, str(path))
    return ModelChoice(checkpoint=str(path))


def model_only(config: LabelJobConfig, paths: list[Path]) -> float:
    from pipeline.weights import resolve_weights

    taxonomy = load_taxonomy(config.vocab)
    model, _ = resolve_weights(config.weights, config.storage_options, True).load("cpu")
    table = load_or_build_vocabulary(taxonomy, model, cache_dir=None)
    embeddings = torch.from_numpy(table.embeddings)
    class_ids = torch.from_numpy(table.class_ids.astype(np.int64))
    names = {c.id: c.name for c in taxonomy.classes}
    decoded = [decode_rgb(p.read_bytes()) for p in paths]
    inputs = [(resize_short_side(rgb, config.short_side), rgb.shape[:2]) for rgb in decoded]

    def run(image: np.ndarray, size: tuple[int, int]) -> None:
        label_images(model, [image], [size], embeddings, class_ids, names, table.background, config.precision)

    run(*inputs[0])  # warm-up
    start = time.perf_counter()
    for image, size in inputs:
        run(image, size)
    return len(inputs) / (time.perf_counter() - start)


def pipeline(config: LabelJobConfig) -> tuple[float, float, float]:
    """(images/s over the whole stream, images/s in steady state, stream seconds).

    Steady state is the manifest's `steady_images_per_s`: the images the actors finished after
    their first batch, over the time since (actor start-up and the first batch drop out). The
    encoding tasks after the actors take 2-7 ms an image on this machine, against the model's 1 s.
    """
    import ray

    from pipeline.labeling.job import plan_label_job, run_label_job

    plan = plan_label_job(config, load_taxonomy(config.vocab), smoke_if_no_weights=True)
    ray.init(logging_level="ERROR")
    try:
        summary = run_label_job(plan)
    finally:
        ray.shutdown()
    processed = summary.labeled + summary.failed
    steady = summary.manifest["steady_images_per_s"] or float("nan")
    return processed / summary.stream_time_s, steady, summary.stream_time_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,san-vit-b16")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--vocab", default="ade150")
    parser.add_argument("--batch-size", type=int, default=4, help="the labeling job's default")
    # small files and blocks, so that a short run's steady state can be told apart from
    # its start; each file is a load task, actor calls and a write task, whose overhead is per file
    parser.add_argument("--rows-per-file", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    args = parser.parse_args()
    print(
        f"{args.images} photos (scikit-image, 300-640 px), vocabulary {args.vocab}, short side 640, "
        f"{os.cpu_count()} CPUs, {args.precision}, torch {torch.__version__}"
        + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    print(
        "| model | (a) model only, img/s | (b) pipeline steady state, img/s | (b)/(a) "
        "| whole stream incl. actor start, img/s | stream seconds |"
    )
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp) / "images", args.images)
        for name in args.models.split(","):
            config = LabelJobConfig(
                vocab=args.vocab,
                input=str(Path(tmp) / "images"),
                output=str(Path(tmp) / f"out-{name}"),
                weights=weights_for(name, Path(tmp)),
                overwrite=True,
                batch_size=args.batch_size,
                rows_per_file=args.rows_per_file,
                vocab_cache=str(Path(tmp) / "vocab"),
                precision=args.precision,
            )
            alone = model_only(config, paths)
            whole, steady, seconds = pipeline(config)
            print(
                f"| {name} | {alone:.2f} | {steady:.2f} | {steady / alone:.0%} | {whole:.2f} | {seconds:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""Quick-start demo: label sample photographs with the labeling job on a local Ray.

    san demo [--output out/demo] [--checkpoint URI] [--vocab coco-stuff-171]

Writes four real photographs (shipped with scikit-image) to OUTPUT/images, labels them and prints
the classes found. Without published weights it runs a random-weight smoke model and says so: on
screen, in the output's _manifest.json and across every preview.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from PIL import Image  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from pipeline.ray_session import configure_logging  # noqa: E402
from schemas.cli import add_local_ray_flags, add_logging_flags, explain, log_level  # noqa: E402
from schemas.jobs import LabelJobConfig, ModelChoice  # noqa: E402
from schemas.taxonomy import TaxonomyError, load_taxonomy  # noqa: E402

log = logging.getLogger("jobs.demo")
DESCRIPTION = "Quick start: label four sample photographs on a local Ray and print the classes found."
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def write_sample_images(directory: Path) -> None:
    import skimage.data

    directory.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_PHOTOS:
        path = directory / f"{name}.jpg"
        if not path.exists():
            Image.fromarray(getattr(skimage.data, name)()).save(path, quality=92)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="out/demo", help="demo folder (default: out/demo)")
    parser.add_argument("--vocab", default="coco-stuff-171", help="taxonomy (default: coco-stuff-171)")
    parser.add_argument("--input", default=None, help="folder of images (default: the sample photographs)")
    parser.add_argument("--model", default=None, help="preset (default: san-vit-b16)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint path or URI instead of --model")
    parser.add_argument("--model-config", default=None, help="JSON model config for a --checkpoint without one")
    short_side = LabelJobConfig.model_fields["short_side"]
    parser.add_argument("--short-side", type=int, default=short_side.default, help=short_side.description)
    add_local_ray_flags(parser)
    add_logging_flags(parser)


def run(args: argparse.Namespace) -> int:
    level = log_level(args)
    configure_logging(level)
    output = Path(args.output)
    images = Path(args.input) if args.input else output / "images"
    if not args.input:
        write_sample_images(images)
    labels = output / "labels"
    try:
        config = LabelJobConfig(
            vocab=args.vocab,
            input=str(images),
            output=str(labels),
            weights=ModelChoice(model=args.model, checkpoint=args.checkpoint, model_config_uri=args.model_config),
            short_side=args.short_side,
            preview=4,
            overwrite=True,
        )
        taxonomy = load_taxonomy(config.vocab)
    except ValidationError as e:
        print(f"invalid arguments:\n{explain(e, LabelJobConfig)}", file=sys.stderr)
        return 2
    except TaxonomyError as e:
        print(f"invalid taxonomy:\n{e}", file=sys.stderr)
        return 2

    from pipeline.inputs import InputError
    from pipeline.labeling.job import label
    from pipeline.store import LabelStore
    from pipeline.weights import SMOKE_BANNER, WeightsError

    try:
        summary = label(config, taxonomy, smoke_if_no_weights=True, log_level=level, ray_dashboard=args.ray_dashboard)
    except (InputError, WeightsError) as e:
        log.error("%s", e)
        return 1

    for row in sorted(LabelStore(str(labels)).rows(), key=lambda r: r["image_uri"]):
        name = Path(row["image_uri"]).name
        if row["error"]:
            print(f"{name:<16} error: {row['error']}")
            continue
        total = row["width"] * row["height"]
        areas = Counter({s["class_name"]: s["area"] / total for s in row["segments"]})
        print(f"{name:<16} " + ", ".join(f"{n} {share:.0%}" for n, share in areas.most_common(5)))
    manifest = json.loads((labels / "_manifest.json").read_text())
    print(f"labels, previews and manifest under {labels} (weights: {manifest['weights']})")
    if not summary.manifest["labels_meaningful"]:
        print(f"{SMOKE_BANNER}: the classes above come from random weights.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="san demo", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

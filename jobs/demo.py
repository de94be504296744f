"""Quick-start demo: label sample photographs with the labeling job on a local Ray.

    python jobs/demo.py [--output out/demo] [--checkpoint URI] [--vocab coco-stuff-171]

Writes four real photographs (shipped with scikit-image) to OUTPUT/images, runs jobs/label.py on
them and prints the classes it found. Without published weights it runs a random-weight smoke
model and says so, on screen and in the output's _manifest.json (labels meaningless).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from PIL import Image  # noqa: E402

from jobs.label import main as label_main  # noqa: E402
from pipeline.results import read_output_rows  # noqa: E402

SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def write_sample_images(directory: Path) -> None:
    import skimage.data

    directory.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_PHOTOS:
        path = directory / f"{name}.jpg"
        if not path.exists():
            Image.fromarray(getattr(skimage.data, name)()).save(path, quality=92)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="out/demo")
    parser.add_argument("--vocab", default="coco-stuff-171")
    parser.add_argument("--input", default=None, help="folder of images (default: the sample photographs)")
    parser.add_argument("--model", default="san-vit-b16")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--model-config", default=None)
    parser.add_argument("--short-side", default="640")
    args = parser.parse_args(argv)

    output = Path(args.output)
    images = Path(args.input) if args.input else output / "images"
    if not args.input:
        write_sample_images(images)
    weights = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--model", args.model]
    if args.model_config:
        weights += ["--model-config", args.model_config]
    labels = output / "labels"
    command = [
        "--vocab",
        args.vocab,
        "--input",
        str(images),
        "--output",
        str(labels),
        "--preview",
        "4",
        "--short-side",
        args.short_side,
        "--overwrite",
        "--smoke-if-no-weights",
        *weights,
    ]
    print("python jobs/label.py " + " ".join(command))
    rc = label_main(command)
    if rc != 0:
        return rc

    for row in sorted(read_output_rows(str(labels)), key=lambda r: r["image_uri"]):
        name = Path(row["image_uri"]).name
        if row["error"]:
            print(f"{name:<16} error: {row['error']}")
            continue
        total = row["width"] * row["height"]
        areas = Counter({s["class_name"]: s["area"] / total for s in row["segments"]})
        print(f"{name:<16} " + ", ".join(f"{n} {share:.0%}" for n, share in areas.most_common(5)))
    manifest = json.loads((labels / "_manifest.json").read_text())
    print(f"labels, previews and manifest under {labels} (weights: {manifest['weights']})")
    if not manifest["labels_meaningful"]:
        print("SMOKE TEST: random weights; the labels above are meaningless.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

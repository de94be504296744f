"""Quick-start demo: segment a few sample photographs with SAN and print the labels found.

    python jobs/demo.py [--model san-vit-b16 | --checkpoint URI] [--output out/demo]

Uses the published weights when they are cached or downloadable; otherwise it runs a
random-weight smoke model, says so, and records it in the output manifest (labels meaningless,
pipeline exercised).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.images import decode_rgb, resize_short_side  # noqa: E402
from san_core.build import build_model, load_model  # noqa: E402
from san_core.hub import WeightsUnavailableError  # noqa: E402
from san_core.presets import get_preset  # noqa: E402

DEFAULT_VOCABULARY = "person,cat,cup,coffee,plate,table,sky,rocket,building,tree,grass,road,wall,floor"
SMOKE_BANNER = """\
******************************************************************************
SMOKE TEST: no published SAN weights here; running a RANDOM-WEIGHT {name}.
The labels below are MEANINGLESS; the model and pipeline are exercised.
For real labels pass --checkpoint /path/to/{file}.
******************************************************************************"""


def write_sample_images(directory: Path) -> list[Path]:
    """Real photographs shipped with scikit-image, saved as JPEG."""
    import skimage.data

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        path = directory / f"{name}.jpg"
        if not path.exists():
            Image.fromarray(getattr(skimage.data, name)()).save(path, quality=92)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="san-vit-b16")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--model-config", default=None)
    parser.add_argument("--input", default=None, help="folder of images (default: sample photographs)")
    parser.add_argument("--output", default="out/demo")
    parser.add_argument("--vocab", default=DEFAULT_VOCABULARY, help="comma-separated class names")
    parser.add_argument("--short-side", type=int, default=640)
    args = parser.parse_args(argv)

    output = Path(args.output)
    images = sorted(Path(args.input).glob("*")) if args.input else write_sample_images(output / "images")
    vocabulary = [name.strip() for name in args.vocab.split(",") if name.strip()]

    weights = "published"
    try:
        loaded = load_model(model=args.model, checkpoint=args.checkpoint, model_config=args.model_config)
        model, model_id, digest = loaded.model, loaded.model_id, loaded.checkpoint_digest
    except WeightsUnavailableError as e:
        preset = get_preset(args.model)
        print(str(e), file=sys.stderr)
        print(SMOKE_BANNER.format(name=preset.name, file=preset.filename))
        torch.manual_seed(0)
        model, model_id, digest, weights = build_model(preset.config), preset.name, None, "random (smoke test)"

    start = time.perf_counter()
    class_embeddings = model.class_embeddings(vocabulary)
    results = []
    for path in images:
        rgb = resize_short_side(decode_rgb(path.read_bytes()), args.short_side)
        tensor = torch.from_numpy(rgb).permute(2, 0, 1).float()
        ((labels, _scores),) = model.predict_labels([tensor], class_embeddings)
        labels = labels.numpy()
        areas = np.bincount(labels.ravel(), minlength=len(vocabulary)) / labels.size
        top = [(vocabulary[i], float(areas[i])) for i in np.argsort(-areas)[:5] if areas[i] > 0]
        print(f"{path.name:<20} " + ", ".join(f"{name} {share:.0%}" for name, share in top))
        label_png = output / "labels" / f"{path.stem}.png"
        label_png.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray((labels + 1).astype(np.uint16)).save(buffer, format="PNG")  # 0 stays "unlabeled"
        label_png.write_bytes(buffer.getvalue())
        results.append({"image": str(path), "labels": dict(top), "label_map": str(label_png)})
    elapsed = time.perf_counter() - start

    manifest = {
        "model": model_id,
        "weights": weights,
        "labels_meaningful": weights == "published",
        "checkpoint_digest": digest,
        "vocabulary": vocabulary,
        "images": results,
        "wall_time_s": round(elapsed, 2),
    }
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"{len(results)} images in {elapsed:.1f}s; manifest: {output / 'manifest.json'}")
    if weights != "published":
        print("(smoke test: random weights, labels meaningless)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

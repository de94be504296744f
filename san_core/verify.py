"""Prove that this port is SAN.

    san verify parity DIR      # DIR laid out like tests/fixtures/parity/tiny_a/
    san verify video DIR       # DIR laid out like tests/fixtures/parity/tiny_video_a/
    san verify manifest FILE   # a published checkpoint's tensor manifest (JSON)

(also `python -m san_core.verify ...`)

`parity` builds the model from DIR/config.json, loads DIR/checkpoint.pth, runs DIR/inputs.pth and
compares every tensor of DIR/expected.pth; `manifest` maps every tensor a published checkpoint
lists onto the matching preset built on the meta device. Both exit non-zero on any failure.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from schemas.model_config import SanModelConfig

from .build import build_model
from .checkpoint import (
    IGNORED_REFERENCE_KEYS,
    CheckpointError,
    check_state_dict,
    from_reference_layout,
    load_into,
    read_checkpoint,
)
from .model import SAN
from .postprocess import semantic_scores
from .presets import PRESETS
from .video import cluster_queries

PARITY_TOLERANCE = 1e-4


@dataclass
class Comparison:
    name: str
    shape: tuple[int, ...]
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= PARITY_TOLERANCE


def _compare(name: str, ours: torch.Tensor, expected: torch.Tensor) -> Comparison:
    if tuple(ours.shape) != tuple(expected.shape):
        return Comparison(
            f"{name} (shape {tuple(ours.shape)} != {tuple(expected.shape)})", tuple(expected.shape), float("inf")
        )
    diff = (ours.detach().float().cpu() - expected.float()).abs().max().item()
    return Comparison(name, tuple(expected.shape), diff)


def run_parity(directory: str | Path) -> list[Comparison]:
    """Run the fixture in `directory` through this port; one Comparison per expected tensor."""
    model, inputs, expected = _load_fixture(Path(directory))

    with torch.no_grad():
        class_embeddings = model.class_embeddings(inputs["vocabulary"])
        classifier = model.text_classifier.classifier_weights(class_embeddings)
        sizes = list(zip(inputs["heights"], inputs["widths"], strict=True))
        out = model(inputs["images"], class_embeddings)  # one padded batch, as the reference ran it
        sem_seg = [
            semantic_scores(out.class_logits[i], out.mask_logits[i], out.padded_size, out.input_sizes[i], size)
            for i, size in enumerate(sizes)
        ]

    results = [_compare("classifier", classifier, expected["classifier"])]
    clip_expected = expected["clip_features"]
    for idx, (feature_map, cls_token) in enumerate(
        zip(out.clip_features.maps, out.clip_features.cls_tokens, strict=True)
    ):
        if str(idx) in clip_expected:
            results.append(_compare(f"clip_features[{idx}]", feature_map, clip_expected[str(idx)]))
            # The reference keeps class tokens sequence-first: [1, B, width].
            results.append(
                _compare(f"clip_features[{idx}_cls_token]", cls_token[None], clip_expected[f"{idx}_cls_token"])
            )
    compared = {str(i) for i in range(len(out.clip_features.maps))} | {
        f"{i}_cls_token" for i in range(len(out.clip_features.maps))
    }
    for key in sorted(set(clip_expected) - compared):
        results.append(
            Comparison(f"clip_features[{key}] (not produced)", tuple(clip_expected[key].shape), float("inf"))
        )
    results.append(_compare("mask_preds", out.mask_logits, expected["mask_preds"]))
    results.append(_compare("attn_bias", out.attn_biases[-1], expected["attn_bias"]))
    results.append(_compare("mask_embs", out.region_embeddings, expected["mask_embs"]))
    for i, (ours, theirs) in enumerate(zip(sem_seg, expected["sem_seg"], strict=True)):
        results.append(_compare(f"sem_seg[{i}]", ours, theirs))
    return results


def _exact(name: str, equal: bool, shape: tuple[int, ...] = ()) -> Comparison:
    return Comparison(name, shape, 0.0 if equal else float("inf"))


def _load_fixture(directory: Path) -> tuple[SAN, dict, dict]:
    config = SanModelConfig.from_json_file(directory / "config.json")
    model = build_model(config)
    load_into(model, read_checkpoint(str(directory / "checkpoint.pth")).state_dict, source="checkpoint.pth")
    inputs = torch.load(directory / "inputs.pth", weights_only=True)
    expected = torch.load(directory / "expected.pth", weights_only=True)
    return model, inputs, expected


def run_video_parity(directory: str | Path) -> list[Comparison]:
    """Run the video fixture in `directory` (one clip per video, each on its own as the reference
    was run) through this port; one Comparison per stage per video. Each stage is checked on its
    own: k-means runs on the reference's stored queries, the stages after it from the reference's
    stored centres. The last check runs the whole clip end to end, clustering its own queries."""
    model, inputs, expected = _load_fixture(Path(directory))
    kmeans = model.config.video_settings.kmeans
    results = []
    with torch.no_grad():
        class_embeddings = model.class_embeddings(inputs["vocabulary"])
        for v, (frames, height, width, reference) in enumerate(
            zip(inputs["videos"], inputs["heights"], inputs["widths"], expected["videos"], strict=True)
        ):
            centres = cluster_queries(
                reference["queries"], model.config.num_clusters, kmeans.random_state, kmeans.n_init
            )
            size = (height, width)
            ours = model.predict_video(frames, class_embeddings, size, cluster_centers=reference["cluster_centers"])
            out = ours.outputs
            whole = model.predict_video(frames, class_embeddings, size)  # clustering its own queries
            results += [
                _compare(f"video[{v}].queries", out.queries, reference["queries"]),
                _compare(f"video[{v}].cluster_centers", centres, reference["cluster_centers"]),
                _compare(f"video[{v}].mask_preds", out.mask_logits, reference["mask_preds"]),
                _compare(f"video[{v}].attn_bias", out.attn_biases[-1], reference["attn_bias"]),
                _compare(f"video[{v}].class_logits", out.class_logits, reference["class_logits"]),
                _compare(f"video[{v}].sem_seg", ours.score_maps, reference["sem_seg"]),
                _exact(f"video[{v}].pred_labels (exact)", ours.clip.labels == list(reference["pred_labels"])),
                _compare(
                    f"video[{v}].pred_scores",
                    torch.tensor(ours.clip.scores, dtype=torch.float64),
                    torch.tensor(list(reference["pred_scores"]), dtype=torch.float64),
                ),
                _exact(
                    f"video[{v}].pred_masks (exact)",
                    tuple(ours.clip.masks.shape) == tuple(reference["pred_masks"].shape)
                    and bool((ours.clip.masks == reference["pred_masks"]).all()),
                    tuple(reference["pred_masks"].shape),
                ),
                _compare(f"video[{v}].sem_seg (end to end)", whole.score_maps, reference["sem_seg"]),
            ]
    return results


@dataclass
class ManifestReport:
    preset: str
    listed: int
    landed: int
    ignored: list[str]
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None and self.landed + len(self.ignored) == self.listed


def _preset_for_manifest(path: Path, manifest: dict) -> str:
    for name, preset in PRESETS.items():
        if Path(preset.filename).stem == path.stem:
            return name
    for name, preset in PRESETS.items():  # fall back to matching the CLIP positional embedding
        model = build_model(preset.config, "meta")
        pos = manifest.get("clip_visual_extractor.positional_embedding", {}).get("shape")
        if pos == list(model.clip_features.positional_embedding.shape):
            return name
    raise ValueError(f"{path} matches no preset ({', '.join(PRESETS)})")


def check_manifest(path: str | Path) -> ManifestReport:
    """Map every tensor listed in a published checkpoint manifest onto the matching preset."""
    path = Path(path)
    manifest = json.loads(path.read_text())
    preset = _preset_for_manifest(path, manifest)
    model = build_model(PRESETS[preset].config, "meta")
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}
    synthetic = {
        name: torch.empty(entry["shape"], dtype=dtypes.get(entry.get("dtype", "float32"), torch.float32), device="meta")
        for name, entry in manifest.items()
    }
    ignored = sorted(set(synthetic) & IGNORED_REFERENCE_KEYS)
    converted = from_reference_layout(synthetic)
    try:
        check_state_dict(model, converted, source=str(path))
    except CheckpointError as e:
        landed = sum(
            1 for k, v in converted.items() if k in model.state_dict() and v.shape == model.state_dict()[k].shape
        )
        return ManifestReport(preset, len(manifest), landed, ignored, str(e))
    expected = model.state_dict()
    wrong_dtype = [k for k, v in converted.items() if v.dtype != expected[k].dtype]
    error = f"dtype differs for {wrong_dtype}" if wrong_dtype else None
    return ManifestReport(preset, len(manifest), len(converted) - len(wrong_dtype), ignored, error)


def run(args: argparse.Namespace) -> int:
    """`san verify` (jobs/verify.py parses the flags): args.command is parity, video or manifest."""

    if args.command in ("parity", "video"):
        results = (run_parity if args.command == "parity" else run_video_parity)(args.directory)
        width = max(len(r.name) for r in results)
        print(f"{'tensor':<{width}}  {'shape':<22} max |diff|")
        for r in results:
            print(f"{r.name:<{width}}  {str(list(r.shape)):<22} {r.max_abs_diff:.3e}  {'ok' if r.ok else 'FAIL'}")
        failed = [r for r in results if not r.ok]
        print(f"{len(results) - len(failed)}/{len(results)} tensors within {PARITY_TOLERANCE:g}")
        return 1 if failed else 0

    report = check_manifest(args.file)
    print(
        f"preset {report.preset}: {report.landed}/{report.listed} tensors landed with equal shapes; "
        f"{len(report.ignored)} dropped by name ({', '.join(report.ignored) or 'none'})"
    )
    if report.error:
        print(report.error)
    return 0 if report.ok else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    checks = parser.add_subparsers(dest="command", required=True, metavar="{parity,video,manifest}")
    checks.add_parser("parity", help="compare every tensor with an image fixture folder").add_argument("directory")
    checks.add_parser("video", help="compare every stage with a video fixture folder").add_argument("directory")
    checks.add_parser("manifest", help="map a published checkpoint's tensor manifest onto its preset").add_argument(
        "file"
    )


if __name__ == "__main__":
    import sys

    cli = argparse.ArgumentParser(prog="python -m san_core.verify", description=__doc__.split("\n\n")[0])
    add_arguments(cli)
    sys.exit(run(cli.parse_args()))

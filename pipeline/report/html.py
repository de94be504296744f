"""`san report`: a labeling output as one self-contained HTML page (figures and images embedded as
data URIs, no script, nothing fetched), for a person to see a run at a glance and to know which
images to review first. The page is `templates/report.html.j2`, rendered by Jinja2 with
autoescape on: every string that reaches it (file names, class names, error texts) is escaped."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import jinja2
import numpy as np
from PIL import Image

from schemas.taxonomy import Taxonomy

from ..labeling.overlays import overlay_image
from ..masks.label_maps import decode_label_map
from ..media.images import decode_rgb
from ..media.video import frames_at
from ..store import LabelStore
from . import plots
from .collect import Example, OutputSummary, summarize

THUMB_WIDTH = 360
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 2px 8px; }
th { background: #f3f3f3; text-align: left; } td.n { text-align: right; }
.banner { background: #c80000; color: white; padding: 0.6em; font-weight: bold; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; } figure { margin: 0; width: 360px; }
figcaption { font-size: 0.8em; word-break: break-all; } img { max-width: 100%; }
"""


_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
)


def _figure(data: bytes, mime: str, alt: str, **more: Any) -> dict[str, Any]:
    """An image for the template: embedded as a data URI, with its alt text."""
    return {"src": f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}", "alt": alt, **more}


def _label_maps(labels: str, shown: list[Example], storage_options: Mapping[str, Any] | None) -> dict[str, bytes]:
    """The label-map PNGs of the shown rows, read again (a report keeps none while it scans): of
    each file that holds some, only the row groups that do, and their label maps alone."""
    store = LabelStore(labels, storage_options)
    rows_by_file: dict[str, set[int]] = {}
    for example in shown:
        if example.source is not None:
            path, index = example.source
            rows_by_file.setdefault(path, set()).add(index)
    found: dict[str, bytes] = {}
    for path, indices in sorted(rows_by_file.items()):
        table = store.take(path, sorted(indices), ["image_uri", "label_map_png"])
        found.update(zip(table["image_uri"].to_pylist(), table["label_map_png"].to_pylist(), strict=True))
    return found


def _review_caption(row: dict[str, Any]) -> str:
    """What a least confident image's caption says of it."""
    return (
        f"confidence {row.get('mean_confidence') or 0:.2f}, uncertain {row.get('uncertain_fraction') or 0:.0%}, "
        f"margin {row.get('mean_margin') or 0:.2f}: {', '.join(row['classes'])}"
    )


def _pixels(example: Example, storage_options: Mapping[str, Any] | None) -> np.ndarray:
    """The image, or the video frame, a row labels (upright, at its own size)."""
    if example.video_uri is None:
        with fsspec.open(example.image_uri, "rb", **(storage_options or {})) as f:
            return decode_rgb(f.read())
    index = int(example.image_uri.rsplit("#frame=", 1)[1])
    for item in frames_at(example.video_uri, {index}, storage_options):
        return item.rgb
    raise ValueError(f"{example.image_uri}: the frame could not be decoded again")


def _thumbnail(
    example: Example, label_map_png: bytes, taxonomy: Taxonomy, banner: str | None, options: Mapping[str, Any] | None
) -> bytes:
    rgb, label_map = _pixels(example, options), decode_label_map(label_map_png)
    if rgb.shape[1] > THUMB_WIDTH:
        size = (THUMB_WIDTH, max(1, round(rgb.shape[0] * THUMB_WIDTH / rgb.shape[1])))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
        label_map = np.asarray(Image.fromarray(label_map).resize(size, Image.NEAREST))
    buffer = io.BytesIO()
    overlay_image(rgb, label_map, taxonomy, banner=banner).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _gallery(
    examples: list[tuple[Example, str]],
    maps: Mapping[str, bytes],
    taxonomy: Taxonomy,
    banner: str | None,
    options: Mapping[str, Any] | None,
) -> list[dict[str, Any]]:
    figures = []
    for example, caption in examples:
        if example.image_uri not in maps:
            continue
        try:
            jpeg = _thumbnail(example, maps[example.image_uri], taxonomy, banner, options)
        except Exception as e:  # an image moved or deleted since: say so, show the rest
            figures.append({"src": None, "alt": example.image_uri, "problem": str(e)})
            continue
        figures.append(_figure(jpeg, "image/jpeg", example.image_uri, caption=caption))
    return figures


def _precision(precision: Any) -> str:
    """The manifest's {"asked": "auto", "used": "bf16"} as "bf16 (asked: auto)"."""
    if not isinstance(precision, dict):
        return str(precision or "unknown")
    used, asked = precision.get("used") or "none (nothing labeled)", precision.get("asked")
    return used if asked in (None, used) else f"{used} (asked: {asked})"


def _throughput(manifest: Mapping[str, Any]) -> str:
    """Rows/s over the run, and after start-up where the run was long enough to say."""
    overall, steady = manifest.get("images_per_s"), manifest.get("steady_images_per_s")
    if overall is None:
        return "unknown"
    return f"{overall:.2f} rows/s" + (f", {steady:.2f} after start-up" if steady else "")


def _run_section(summary: OutputSummary) -> dict[str, Any]:
    manifest = summary.manifest or {}
    provenance = manifest.get("provenance", {})
    taxonomy = provenance.get("taxonomy", {})
    facts = [
        ["model", manifest.get("model_id", "unknown")],
        ["weights", manifest.get("weights", "unknown")],
        ["checkpoint sha256", (provenance.get("weights_digest") or "none")[:16]],
        ["taxonomy", f"{taxonomy.get('name', '?')} v{taxonomy.get('version', '?')}"],
        ["precision", _precision(manifest.get("precision"))],
        ["video sampling", provenance.get("video_sampling") or "-"],
        ["run", manifest.get("run_id", "unknown")],
        ["started", manifest.get("started_at", "unknown")],
        ["wall time", f"{manifest.get('wall_time_s', 0):.1f} s"],
        ["throughput", _throughput(manifest)],
        ["status", manifest.get("status", "no manifest: the run has not finished")],
    ]
    counts = [
        ["rows", summary.rows],
        ["labeled", summary.labeled],
        ["errors", summary.rows - summary.labeled],
        ["videos", summary.videos],
    ]
    return {
        "facts": facts,
        "counts": counts,
        "errors": [[name, count] for name, count in summary.errors.most_common()],
        "kinds": ", ".join(f"{k} {v}" for k, v in summary.error_kinds.items()) or "none",
    }


def _evaluation_section(evaluation: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    fs, root = fsspec.core.url_to_fs(evaluation, **(storage_options or {}))
    root = root.rstrip("/")
    result = json.loads(fs.cat(f"{root}/metrics.json"))
    per_class = sorted(result["per_class"], key=lambda r: (r["IoU"] is None, r["IoU"] or 0))
    rows = [[r["name"], "absent" if r["IoU"] is None else f"{r['IoU']:.2f}",
             "absent" if r["ACC"] is None else f"{r['ACC']:.2f}"] for r in per_class]  # fmt: skip
    confusion = None
    if fs.exists(f"{root}/confusion.npy"):
        with fs.open(f"{root}/confusion.npy", "rb") as f:
            matrix = np.load(f)
        names = [r["name"] for r in result["per_class"]]
        confusion = _figure(plots.confusion(matrix, names), "image/png", "confusion matrix")
    return {
        "summary": [f"{result[k]:.2f}" for k in ("mIoU", "fwIoU", "mACC", "pACC")]
        + [result["images"].get("scored", 0)],
        "iou": _figure(plots.iou_bars(result["per_class"]), "image/png", "per-class IoU"),
        "confusion": confusion,
        "rows": rows,
    }


def build_report(
    labels: str,
    taxonomy: Taxonomy,
    evaluation: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    least: int = 12,
    examples: int = 24,
) -> str:
    """The report of the labeling output `labels` as one HTML document (see the module's docstring)."""
    summary = summarize(labels, storage_options, least, examples)
    manifest = summary.manifest or {}
    smoke = manifest.get("labels_meaningful") is False
    banner = "SMOKE TEST: RANDOM WEIGHTS, LABELS MEANINGLESS" if smoke else None
    least_confident = sorted(summary.least_confident, reverse=True)
    class_examples = [summary.class_examples[c] for c in sorted(summary.class_examples)]
    maps = _label_maps(labels, [*least_confident, *class_examples], storage_options)
    names = summary.class_names
    classes: dict[str, Any] = {"rows": []}
    if summary.class_pixels:
        figure = plots.class_distribution(summary.class_pixels, summary.class_images, names)
        classes["figure"] = _figure(figure, "image/png", "classes")
        classes["rows"] = [[names[c], summary.class_images[c], summary.class_pixels[c]] for c in sorted(
            summary.class_pixels, key=lambda c: -summary.class_pixels[c])]  # fmt: skip
    confidence = None
    if summary.mean_margins:
        histograms = plots.histograms(
            {
                "mean confidence": summary.mean_confidences.counts_and_edges(),
                "mean margin": summary.mean_margins.counts_and_edges(),
                "uncertain share": summary.uncertain_fractions.counts_and_edges(),
                "segment margin": summary.segment_margins.counts_and_edges(),
            }
        )
        confidence = _figure(histograms, "image/png", "confidence histograms")
    least_captions = [(e, _review_caption(e.detail["row"])) for e in least_confident]
    example_captions = [(e, f"{names[e.detail['class_id']]}: {int(e.key):,} pixels") for e in class_examples]
    return _TEMPLATES.get_template("report.html.j2").render(
        labels=labels,
        style=STYLE,
        banner=banner,
        run=_run_section(summary),
        classes=classes,
        confidence=confidence,
        least_confident_count=len(least_confident),
        least_confident=_gallery(least_captions, maps, taxonomy, banner, storage_options),
        class_examples=_gallery(example_captions, maps, taxonomy, banner, storage_options),
        evaluation=_evaluation_section(evaluation, storage_options) if evaluation else None,
    )

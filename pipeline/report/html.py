"""`san report`: a labeling output as one self-contained HTML page (figures and images embedded as
data URIs, no script, nothing fetched), for a person to see a run at a glance and to know which
images to review first."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from schemas.taxonomy import Taxonomy

from ..images import decode_rgb
from ..label_maps import decode_label_map
from ..labeling.preview import overlay_image
from ..video.decode import SampledFrame, VideoReader
from . import plots
from .collect import CONFIDENCE_BINS, Example, OutputSummary, summarize

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


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, mime: str, alt: str) -> str:
    return f'<img src="{_data_uri(data, mime)}" alt="{html.escape(alt)}">'


def _cell(value: Any) -> str:
    return f'<td class="n">{value:,}</td>' if isinstance(value, int) else f"<td>{html.escape(str(value))}</td>"


def _table(header: list[str] | None, rows: list[list[Any]]) -> str:
    """A table; without a header, the first cell of each row is that row's heading."""
    if header is None:
        body = "".join(f"<tr><th>{html.escape(str(row[0]))}</th>{''.join(map(_cell, row[1:]))}</tr>" for row in rows)
        return f"<table>{body}</table>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr>{''.join(map(_cell, row))}</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _label_maps(labels: str, shown: list[Example], storage_options: Mapping[str, Any] | None) -> dict[str, bytes]:
    """The label-map PNGs of the shown rows, read again (a report keeps none while it scans): of
    each file that holds some, only the row groups that do, and their label maps alone."""
    fs, _ = fsspec.core.url_to_fs(labels, **(storage_options or {}))
    rows_by_file: dict[str, set[int]] = {}
    for example in shown:
        if example.source is not None:
            path, index = example.source
            rows_by_file.setdefault(path, set()).add(index)
    found: dict[str, bytes] = {}
    for path, indices in sorted(rows_by_file.items()):
        ordered = sorted(indices)
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            start = 0
            for group in range(parquet.num_row_groups):
                end = start + parquet.metadata.row_group(group).num_rows
                wanted = [index - start for index in ordered if start <= index < end]
                if wanted:
                    table = parquet.read_row_group(group, columns=["image_uri", "label_map_png"]).take(wanted)
                    found.update(zip(table["image_uri"].to_pylist(), table["label_map_png"].to_pylist(), strict=True))
                start = end
    return found


def _pixels(example: Example, storage_options: Mapping[str, Any] | None) -> np.ndarray:
    """The image, or the video frame, a row labels (upright, at its own size)."""
    if example.video_uri is None:
        with fsspec.open(example.image_uri, "rb", **(storage_options or {})) as f:
            return decode_rgb(f.read())
    index = int(example.image_uri.rsplit("#frame=", 1)[1])
    with fsspec.open(example.video_uri, "rb", **(storage_options or {})) as source:
        with VideoReader(source, example.video_uri) as reader:
            for item in reader.frames(only={index}):
                if isinstance(item, SampledFrame):
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
) -> str:
    figures = []
    for example, caption in examples:
        if example.image_uri not in maps:
            continue
        try:
            jpeg = _thumbnail(example, maps[example.image_uri], taxonomy, banner, options)
        except Exception as e:  # an image moved or deleted since: say so, show the rest
            figures.append(
                f"<figure><figcaption>{html.escape(example.image_uri)}: not shown ({e})</figcaption></figure>"
            )
            continue
        figures.append(
            f"<figure>{_img(jpeg, 'image/jpeg', example.image_uri)}"
            f"<figcaption>{html.escape(caption)}<br>{html.escape(example.image_uri)}</figcaption></figure>"
        )
    return f'<div class="grid">{"".join(figures)}</div>'


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


def _run_section(summary: OutputSummary) -> str:
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
    errors = [[name, count] for name, count in summary.errors.most_common()]
    kinds = ", ".join(f"{k} {v}" for k, v in summary.error_kinds.items()) or "none"
    return (
        "<h2>Run</h2>"
        + _table(None, facts)
        + _table(None, counts)
        + (f"<p>Errors by kind ({kinds}):</p>" + _table(["error", "rows"], errors) if errors else "<p>No errors.</p>")
    )


def _evaluation_section(evaluation: str, storage_options: Mapping[str, Any] | None) -> str:
    fs, root = fsspec.core.url_to_fs(evaluation, **(storage_options or {}))
    root = root.rstrip("/")
    result = json.loads(fs.cat(f"{root}/metrics.json"))
    summary = _table(
        ["mIoU", "fwIoU", "mACC", "pACC", "images scored"],
        [[f"{result[k]:.2f}" for k in ("mIoU", "fwIoU", "mACC", "pACC")] + [result["images"].get("scored", 0)]],
    )
    per_class = sorted(result["per_class"], key=lambda r: (r["IoU"] is None, r["IoU"] or 0))
    rows = [[r["name"], "absent" if r["IoU"] is None else f"{r['IoU']:.2f}",
             "absent" if r["ACC"] is None else f"{r['ACC']:.2f}"] for r in per_class]  # fmt: skip
    parts = ["<h2>Evaluation</h2>", summary, _img(plots.iou_bars(result["per_class"]), "image/png", "per-class IoU")]
    if fs.exists(f"{root}/confusion.npy"):
        with fs.open(f"{root}/confusion.npy", "rb") as f:
            matrix = np.load(f)
        names = [r["name"] for r in result["per_class"]]
        parts.append(_img(plots.confusion(matrix, names), "image/png", "confusion matrix"))
    parts.append("<p>Per-class IoU and accuracy, lowest first:</p>" + _table(["class", "IoU", "ACC"], rows))
    return "".join(parts)


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
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>SAN labels: {html.escape(labels)}</title>',
        f"<style>{STYLE}</style></head><body>",
        f'<div class="banner">{banner}</div>' if banner else "",
        f"<h1>SAN labels in {html.escape(labels)}</h1>",
        _run_section(summary),
        "<h2>Classes</h2>",
    ]
    if summary.class_pixels:
        parts.append(
            _img(plots.class_distribution(summary.class_pixels, summary.class_images, names), "image/png", "classes")
        )
        rows = [[names[c], summary.class_images[c], summary.class_pixels[c]] for c in sorted(
            summary.class_pixels, key=lambda c: -summary.class_pixels[c])]  # fmt: skip
        parts.append(_table(["class", "images", "pixels"], rows))
    else:
        parts.append("<p>No labeled pixels.</p>")
    parts.append("<h2>Confidence</h2>")
    if summary.mean_margins:
        parts.append(
            "<p>Per labeled row: the mean score of the winning class, the mean top-two margin (relative "
            "to the top score) and the share of uncertain pixels (margin under 10%); per segment, its "
            "mean margin. Review the least confident first.</p>"
        )
        parts.append(
            _img(
                plots.histograms(
                    {
                        "mean score": np.histogram(np.concatenate(summary.mean_scores), bins=CONFIDENCE_BINS),
                        "mean margin": summary.mean_margins.counts_and_edges(),
                        "uncertain share": summary.uncertain_fractions.counts_and_edges(),
                        "segment margin": summary.segment_margins.counts_and_edges(),
                    }
                ),
                "image/png",
                "confidence histograms",
            )
        )
    else:
        parts.append("<p>These labels carry no confidence (an output of an earlier release).</p>")
    parts.append(f"<h2>The {len(least_confident)} least confident</h2>")
    parts.append(
        _gallery(
            [
                (
                    e,
                    f"uncertain {e.detail['row'].get('uncertain_fraction') or 0:.0%}, margin "
                    f"{e.detail['row'].get('mean_margin') or 0:.2f}: {', '.join(e.detail['row']['classes'])}",
                )
                for e in least_confident
            ],
            maps,
            taxonomy,
            banner,
            storage_options,
        )  # fmt: skip
    )
    parts.append("<h2>An example of each class</h2>")
    parts.append(
        _gallery(
            [(e, f"{names[e.detail['class_id']]}: {int(e.key):,} pixels") for e in class_examples],
            maps,
            taxonomy,
            banner,
            storage_options,
        )  # fmt: skip
    )
    if evaluation:
        parts.append(_evaluation_section(evaluation, storage_options))
    parts.append("</body></html>")
    return "".join(parts)

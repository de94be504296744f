"""Export a labeling output for annotation tools.

    san export --format coco --input s3://bucket/labels/ --vocab taxonomy.yaml --output labels.coco.json \\
        --image-root s3://bucket/images/
    san export --format label-studio --input s3://bucket/labels/ --vocab taxonomy.yaml --output tasks.json
    san export --format cvat --input s3://bucket/labels/ --vocab taxonomy.yaml --output cvat.json
    san export --format png --input s3://bucket/labels/ --vocab taxonomy.yaml --output s3://bucket/pngs/
    san export --format vspw --input s3://bucket/labels/ --vocab taxonomy.yaml --output s3://bucket/vspw/

Exit codes: 0 written; 1 the output cannot be read or written; 2 invalid flags or taxonomy.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

import fsspec  # noqa: E402

from pipeline.exports.coco import to_coco  # noqa: E402
from pipeline.exports.label_studio import labeling_config, to_label_studio  # noqa: E402
from pipeline.exports.png import export_png  # noqa: E402
from pipeline.exports.vspw import export_vspw  # noqa: E402
from pipeline.ray_session import configure_logging  # noqa: E402
from pipeline.store import LabelStore, ProvenanceError  # noqa: E402
from schemas.cli import add_config_flags, add_logging_flags, config_and_taxonomy, log_level  # noqa: E402
from schemas.jobs import ExportConfig  # noqa: E402
from schemas.taxonomy import Taxonomy  # noqa: E402

log = logging.getLogger("jobs.export")
DESCRIPTION = "Export a labeling output for annotation tools: COCO, Label Studio, CVAT, PNG folders, VSPW (video)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, ExportConfig)
    add_logging_flags(parser)


def run(args: argparse.Namespace) -> int:
    configure_logging(log_level(args))
    checked = config_and_taxonomy(args, ExportConfig)
    if checked is None:
        return 2
    config, taxonomy = checked
    try:
        LabelStore(config.input, config.storage_options).check_taxonomy(taxonomy)
    except ProvenanceError as e:
        log.error("%s", e)
        return 2
    try:
        return _export(config, taxonomy)
    except (OSError, ValueError) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1


def _write_json(config: ExportConfig, document: object) -> None:
    with fsspec.open(config.output, "w", **config.storage_options) as f:
        json.dump(document, f)


def _export(config: ExportConfig, taxonomy: Taxonomy) -> int:
    rows = LabelStore(config.input, config.storage_options).rows()
    if config.format == "vspw":
        counts = export_vspw(config.input, taxonomy, config.output, config.storage_options)
        log.info("%d videos, %d frames -> %s", counts["videos"], counts["frames"], config.output)
    elif config.format == "png":
        counts = export_png(config.input, taxonomy, config.output, config.image_root, config.storage_options)
        log.info("%d images, %d video frames -> %s", counts["images"], counts["frames"], config.output)
    elif config.format == "label-studio":
        tasks, counts = to_label_studio(rows, taxonomy, config.image_root, config.polygons, config.polygon_tolerance)
        _write_json(config, tasks)
        label_config = config.output.rsplit(".", 1)[0] + ".label_config.xml"
        with fsspec.open(label_config, "w", **config.storage_options) as f:
            f.write(labeling_config(taxonomy, config.polygons))
        log.info("%d tasks, %d results -> %s; the project's labeling config: %s", counts["tasks"], counts["results"],
                 config.output, label_config)  # fmt: skip
        if config.polygons:
            log.info("%d segments kept as brush masks: a polygon cannot hold their holes", counts["brush_fallbacks"])
        if counts["video_frames_skipped"]:
            log.warning("%d video frames left out: export videos with --format vspw", counts["video_frames_skipped"])
    else:  # coco, or cvat: COCO 1.0 with polygons, file names under the images' folder
        cvat = config.format == "cvat"
        polygons = config.polygons or cvat
        coco = to_coco(rows, taxonomy, config.image_root, polygons, config.polygon_tolerance)
        if cvat:
            coco["licenses"] = [{"id": 0, "name": "", "url": ""}]
        _write_json(config, coco)
        log.info("%d images, %d annotations -> %s", len(coco["images"]), len(coco["annotations"]), config.output)
        if polygons:
            log.info(
                "%d of %d segments kept as RLE (iscrowd 1): a polygon cannot hold their holes",
                coco["info"]["rle_fallbacks"], len(coco["annotations"]),
            )  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="san export", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""Export a labeling output for annotation tools.

    san export --format coco --input s3://bucket/labels/ --vocab taxonomy.yaml --output labels.coco.json \\
        --image-root s3://bucket/images/
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
from pipeline.exports.vspw import export_vspw  # noqa: E402
from pipeline.logs import configure_logging  # noqa: E402
from pipeline.results import ProvenanceError, check_taxonomy, read_output_rows  # noqa: E402
from schemas.cli import add_config_flags, add_logging_flags, config_and_taxonomy, log_level  # noqa: E402
from schemas.jobs import ExportConfig  # noqa: E402

log = logging.getLogger("jobs.export")
DESCRIPTION = "Export a labeling output in a format annotation tools read (COCO JSON, or VSPW for video)."


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
        check_taxonomy(config.input, taxonomy, config.storage_options)
    except ProvenanceError as e:
        log.error("%s", e)
        return 2
    try:
        if config.format == "vspw":
            counts = export_vspw(config.input, taxonomy, config.output, config.storage_options)
            log.info("%d videos, %d frames -> %s", counts["videos"], counts["frames"], config.output)
            return 0
        coco = to_coco(read_output_rows(config.input, config.storage_options), taxonomy, config.image_root)
        with fsspec.open(config.output, "w", **config.storage_options) as f:
            json.dump(coco, f)
    except (OSError, ValueError) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1
    log.info("%d images, %d annotations -> %s", len(coco["images"]), len(coco["annotations"]), config.output)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="san export", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

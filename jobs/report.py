"""A labeling output as one self-contained HTML page: the run, its classes, its confidence, the
least confident images with overlays, an example of each class, and an evaluation's results.

    san report --input s3://bucket/labels/ --vocab taxonomy.yaml --output report.html \\
        [--evaluation reports/run1]

Exit codes: 0 written; 1 the output cannot be read or the report written; 2 invalid flags or
taxonomy, or labels made with another taxonomy.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

import fsspec  # noqa: E402

from pipeline.ray_session import configure_logging  # noqa: E402
from pipeline.store import LabelStore, ProvenanceError  # noqa: E402
from schemas.cli import add_config_flags, add_logging_flags, config_and_taxonomy, log_level  # noqa: E402
from schemas.jobs import ReportConfig  # noqa: E402

log = logging.getLogger("jobs.report")
DESCRIPTION = "Write a labeling output's report: one self-contained HTML page to review a run."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, ReportConfig)
    add_logging_flags(parser)


def run(args: argparse.Namespace) -> int:
    configure_logging(log_level(args))
    checked = config_and_taxonomy(args, ReportConfig)
    if checked is None:
        return 2
    config, taxonomy = checked
    try:
        LabelStore(config.input, config.storage_options).check_taxonomy(taxonomy)
    except ProvenanceError as e:
        log.error("%s", e)
        return 2
    from pipeline.report.html import build_report

    try:
        page = build_report(
            config.input, taxonomy, config.evaluation, config.storage_options, config.least_confident, config.examples
        )
        with fsspec.open(config.output, "w", encoding="utf-8", **config.storage_options) as f:
            f.write(page)
    except (OSError, ValueError) as e:
        log.error("%s: %s", type(e).__name__, e)
        return 1
    log.info("report of %s -> %s (%.1f MB)", config.input, config.output, len(page) / 1e6)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="san report", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

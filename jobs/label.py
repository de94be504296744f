"""Label images with SAN: stream them from storage through SAN actor pools into Parquet.

    san label --vocab taxonomy.yaml --input s3://bucket/images/ --output s3://bucket/labels/

(also `python jobs/label.py ...`, as `ray job submit` runs it). Runs on a local Ray started
in-process, or on a cluster when started by `ray job submit` (or with RAY_ADDRESS set).
Exit codes: 0 done; 1 the job could not run or too many inputs failed; 2 invalid flags or
taxonomy (checked before Ray starts); 75 another run holds --output (try again later).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from pipeline.ray_session import configure_logging, log_summary  # noqa: E402
from schemas.cli import (  # noqa: E402
    add_config_flags,
    add_local_ray_flags,
    add_logging_flags,
    config_and_taxonomy,
    log_level,
)
from schemas.jobs import OUTPUT_BUSY_EXIT, LabelJobConfig  # noqa: E402

log = logging.getLogger("jobs.label")
DESCRIPTION = "Label images with SAN, streamed through Ray Data into Parquet."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, LabelJobConfig)
    parser.add_argument(
        "--smoke-if-no-weights",
        action="store_true",
        help="quick start only: without the published weights, run random weights (labels meaningless)",
    )
    add_local_ray_flags(parser)
    add_logging_flags(parser)


def run(args: argparse.Namespace) -> int:
    configure_logging(log_level(args))
    checked = config_and_taxonomy(args, LabelJobConfig)
    if checked is None:
        return 2
    config, taxonomy = checked

    from pipeline.inputs import InputError
    from pipeline.labeling.job import label
    from pipeline.store import LeaseLost, OutputBusy, ProvenanceError
    from pipeline.weights import WeightsError

    try:  # input, output, weights and earlier results are checked before Ray starts
        summary = label(config, taxonomy, args.smoke_if_no_weights, log_level(args), args.ray_dashboard)
    except OutputBusy as e:  # not a failure: a scheduler retries later (sysexits' EX_TEMPFAIL)
        log.error("%s: exit %d", e, OUTPUT_BUSY_EXIT)
        return OUTPUT_BUSY_EXIT
    except ProvenanceError as e:
        log.error("%s", e)
        return 2
    except (InputError, WeightsError, LeaseLost) as e:
        log.error("%s", e)
        return 1
    if not summary.manifest["labels_meaningful"]:
        log.warning("smoke test: random weights, the labels are meaningless")
    counts = summary.manifest["counts"]
    line = (  # the run in one line, always the last one: what a scheduler's log shows
        f"run {summary.run_id}: {counts['labeled']} labeled, {counts['failed']} failed, {counts['skipped']} skipped "
        f"in {summary.wall_time_s:.1f}s; results in {config.output}"
    )
    if summary.error_ratio > config.max_error_ratio:
        log.error(
            "%s; %.1f%% of this run's images failed, over --max-error-ratio %.1f%%: exit 1",
            line,
            100 * summary.error_ratio,
            100 * config.max_error_ratio,
        )
        return 1
    log_summary(log, line)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="san label", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

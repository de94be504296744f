"""Measure labeling quality with the SAN benchmark protocol (mIoU, fwIoU, mACC, pACC).

    # (a) run a model over a benchmark in its reference folder layout, then score it
    san evaluate run --dataset ade150 --input datasets/ --output reports/ade150 --checkpoint san_vit_b_16.pth
    # (b) score an existing labeling output against ground-truth label maps (folder or manifest)
    san evaluate score --input s3://bucket/labels/ --ground-truth s3://bucket/gt/ --vocab taxonomy.yaml \\
        --output reports/run1

Writes metrics.json (every number), metrics.md (per-class IoU, sorted) and iou.png (bar chart).
Exit codes: 0 scored; 1 the data or weights cannot be used; 2 invalid flags or taxonomy; 75 another
run is labeling into the labels folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from pydantic import ValidationError  # noqa: E402

from pipeline.ray_session import configure_logging, ray_for_job  # noqa: E402
from schemas.cli import (  # noqa: E402
    add_config_flags,
    add_local_ray_flags,
    add_logging_flags,
    build_config,
    config_and_taxonomy,
    explain,
    log_level,
)
from schemas.jobs import DEFAULT_LEASE_SECONDS, OUTPUT_BUSY_EXIT, EvaluateRunConfig, EvaluateScoreConfig  # noqa: E402
from schemas.taxonomy import load_taxonomy  # noqa: E402

log = logging.getLogger("jobs.evaluate")
DESCRIPTION = "Score labels with the SAN benchmark protocol (mIoU, fwIoU, mACC, pACC)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    modes = parser.add_subparsers(dest="mode", required=True, metavar="{run,score}")
    run_parser = modes.add_parser("run", help=EvaluateRunConfig.__doc__.split(": ", 1)[1])
    add_config_flags(run_parser, EvaluateRunConfig)
    add_local_ray_flags(run_parser)
    add_logging_flags(run_parser)
    score_parser = modes.add_parser("score", help=EvaluateScoreConfig.__doc__.split(": ", 1)[1])
    add_config_flags(score_parser, EvaluateScoreConfig)
    add_local_ray_flags(score_parser)
    add_logging_flags(score_parser)


def _summary(result: dict, written: list[str]) -> None:
    log.info(
        "%s: mIoU %.2f  fwIoU %.2f  mACC %.2f  pACC %.2f  (%d images)",
        result["taxonomy"],
        result["mIoU"],
        result["fwIoU"],
        result["mACC"],
        result["pACC"],
        result["images"]["scored"],
    )
    log.info("reports: %s", ", ".join(written))


def run(args: argparse.Namespace) -> int:
    configure_logging(log_level(args))

    from pipeline.evaluation.scoring import evaluate_output, write_reports
    from pipeline.inputs import InputError
    from pipeline.store import LabelStore, ProvenanceError
    from pipeline.weights import WeightsError

    if args.mode == "score":
        checked = config_and_taxonomy(args, EvaluateScoreConfig)
        if checked is None:
            return 2
        score, taxonomy = checked
        try:
            LabelStore(score.input, score.storage_options).check_taxonomy(taxonomy)
        except ProvenanceError as e:
            log.error("%s", e)
            return 2
        with ray_for_job(log_level(args), args.ray_dashboard):
            result = evaluate_output(
                score.input, score.ground_truth, taxonomy, score.ignore_label, score.storage_options
            )
        _summary(result, write_reports(result, score.output, score.storage_options))
        return 0

    from pipeline.evaluation.benchmarks import benchmark_paths, labels_location, plan_benchmark_labels
    from pipeline.inputs import check_output_writable
    from pipeline.labeling.job import new_run_id, run_label_job
    from pipeline.store import LabelStore, LeaseLost, OutputBusy

    try:
        config = build_config(args, EvaluateRunConfig)
    except ValidationError as e:
        print(f"invalid arguments:\n{explain(e, EvaluateRunConfig)}", file=sys.stderr)
        return 2
    taxonomy = load_taxonomy(config.dataset)
    _, gt_dir, ignore = benchmark_paths(config)
    run_id = new_run_id()
    try:  # the labels folder is held as `san label` holds its output: one run at a time
        check_output_writable(labels_location(config), config.storage_options)
        with LabelStore(labels_location(config), config.storage_options).lease(run_id, DEFAULT_LEASE_SECONDS) as lease:
            plan = plan_benchmark_labels(config, taxonomy, run_id)
            with ray_for_job(log_level(args), args.ray_dashboard):
                run_label_job(plan, lease)
                result = evaluate_output(labels_location(config), gt_dir, taxonomy, ignore, config.storage_options)
    except OutputBusy as e:
        log.error("%s: exit %d", e, OUTPUT_BUSY_EXIT)
        return OUTPUT_BUSY_EXIT
    except ProvenanceError as e:  # labels already there, made with other weights: never score those
        log.error("%s", e)
        return 2
    except (InputError, WeightsError, LeaseLost) as e:
        log.error("%s", e)
        return 1
    _summary(result, write_reports(result, config.output, config.storage_options))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="san evaluate", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

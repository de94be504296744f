"""Fine-tune SAN's side adapter on your own labels with Ray Train; export a model for `san label`.

    san finetune --vocab taxonomy.yaml --train s3://bucket/train.parquet --val s3://bucket/val.parquet \\
        --model san-vit-b16 --output s3://bucket/runs/ft1 --workers 2 --gpus-per-worker 1 --max-steps 20000

(also `python jobs/finetune.py ...`, as `ray job submit` runs it). Runs on a local Ray started
in-process, or on a cluster when started by `ray job submit` (or with RAY_ADDRESS set).
Exit codes: 0 trained and exported; 1 the run could not start or failed; 2 invalid flags or
taxonomy (checked before Ray starts).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from pipeline.ray_session import configure_logging, ray_for_job  # noqa: E402
from schemas.cli import (  # noqa: E402
    DeprecatedFlag,
    add_config_flags,
    add_local_ray_flags,
    add_logging_flags,
    config_and_taxonomy,
    log_level,
)
from schemas.jobs import FinetuneConfig  # noqa: E402

log = logging.getLogger("jobs.finetune")
DESCRIPTION = "Fine-tune SAN's side adapter on your labels with Ray Train; export a model for `san label`."


class DeprecatedInit(DeprecatedFlag):
    """--init NAME|URI: a preset name (no '/', '.' or ':') is --model, anything else --checkpoint."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        preset = not any(c in values for c in "/.:")
        self.new = "--model" if preset else "--checkpoint"
        self.dest = "model" if preset else "checkpoint"
        super().__call__(parser, namespace, values, option_string)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, FinetuneConfig)
    # spellings of the previous release
    parser.add_argument(
        "--init", action=DeprecatedInit, dest="model", new="--model", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--init-config",
        action=DeprecatedFlag,
        dest="model_config_uri",
        new="--model-config",
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
    add_local_ray_flags(parser)
    add_logging_flags(parser)


def run(args: argparse.Namespace) -> int:
    configure_logging(log_level(args))
    checked = config_and_taxonomy(args, FinetuneConfig)
    if checked is None:
        return 2
    config, taxonomy = checked

    from pipeline.inputs import InputError
    from pipeline.training.job import FinetuneError, plan_finetune, run_finetune
    from pipeline.weights import WeightsError

    try:  # data, storage and weights are checked before Ray starts
        plan = plan_finetune(config, taxonomy)
    except (InputError, WeightsError, FinetuneError) as e:
        log.error("%s", e)
        return 1

    import ray

    # A Ray started here needs CPUs for data loading beside the training workers; on a machine with
    # fewer cores than that, declare more (they are shared, not reserved). Never when joining a cluster.
    needed = int(config.workers * config.cpus_per_worker) + 2
    small = not os.environ.get("RAY_ADDRESS") and (os.cpu_count() or 1) < needed
    with ray_for_job(log_level(args), args.ray_dashboard, num_cpus=needed if small else None) as started:
        cpus = ray.cluster_resources().get("CPU", 0)
        if not started and cpus < needed:  # Ray Train would wait for them forever
            log.error(
                "fine-tuning needs %d CPUs (--workers %d x --cpus-per-worker %g, and 2 to load data); the "
                "Ray this process runs has %g: start it with ray.init(num_cpus=%d), or ask for fewer",
                needed, config.workers, config.cpus_per_worker, cpus, needed,
            )  # fmt: skip
            return 1
        try:
            result = run_finetune(plan, log_level(args))
        except Exception as e:
            log.error("fine-tuning failed: %s: %s", type(e).__name__, e)
            return 1
    log.info(
        "label with: san label --checkpoint %s --vocab %s --input ... --output ...", result.export_uri, config.vocab
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="san finetune", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

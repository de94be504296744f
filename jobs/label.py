"""Label images with SAN: stream them from storage through SAN actor pools into Parquet.

    python jobs/label.py --vocab taxonomy.yaml --input s3://bucket/images/ --output s3://bucket/labels/

Runs on a local Ray started in-process, or on a cluster when started by `ray job submit` (or with
RAY_ADDRESS set). Exit codes: 0 done; 1 the job could not run or too many inputs failed;
2 invalid flags or taxonomy (checked before Ray starts).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from pydantic import ValidationError  # noqa: E402

from pipeline.storage import absolute_uri, absolute_vocab  # noqa: E402
from schemas.jobs import FinetuneConfig, LabelJobConfig, ModelChoice  # noqa: E402
from schemas.taxonomy import Taxonomy, TaxonomyError, load_taxonomy  # noqa: E402

JobConfigT = TypeVar("JobConfigT", LabelJobConfig, FinetuneConfig)


def parse_concurrency(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.split(",")]
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError("use MIN or MIN,MAX")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobs/label.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", required=True, help="taxonomy.yaml (path or URI) or a shipped name: ade150, ...")
    parser.add_argument("--input", required=True, help="directory/prefix, glob, or manifest (.txt/.csv/.parquet)")
    parser.add_argument("--output", required=True, help="output directory/prefix (Parquet, _manifest.json)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--model", help="preset: san-vit-b16 (default) or san-vit-l14-336")
    weights.add_argument("--checkpoint", help="checkpoint path or URI (.pth or .safetensors)")
    parser.add_argument("--model-config", help="JSON model config for a --checkpoint that carries none")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--concurrency", type=parse_concurrency, default=(1, 1), help="actor pool size: MIN[,MAX]")
    parser.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1 if the cluster has GPUs")
    parser.add_argument("--torch-threads", type=int, default=None, help="threads per actor")
    parser.add_argument("--short-side", type=int, default=640, help="model input short side (reference: 640)")
    parser.add_argument("--storage-options", type=json.loads, default={}, help="JSON passed to fsspec")
    parser.add_argument("--overwrite", action="store_true", help="discard earlier results in --output")
    parser.add_argument("--max-error-ratio", type=float, default=1.0, help="exit 1 above this share of failed images")
    parser.add_argument("--preview", type=int, default=0, metavar="N", help="write N overlay PNGs to OUTPUT/_previews")
    parser.add_argument("--rows-per-file", type=int, default=256, help="images per Parquet file")
    parser.add_argument("--vocab-cache", default=None, help="vocabulary embedding cache URI")
    parser.add_argument(
        "--smoke-if-no-weights",
        action="store_true",
        help="quick-start only: without published weights, run random weights (labels meaningless)",
    )
    return parser


def config_and_taxonomy(make_config: Callable[[], JobConfigT]) -> tuple[JobConfigT, Taxonomy] | None:
    """A job's config built from its flags, and its taxonomy loaded. On a problem, print it and
    return None: the job then exits 2, before Ray starts."""
    try:
        config = make_config()
        return config, load_taxonomy(config.vocab, config.storage_options)
    except ValidationError as e:
        print(f"invalid arguments:\n{e}", file=sys.stderr)
    except TaxonomyError as e:
        print(f"invalid taxonomy:\n{e}", file=sys.stderr)
    return None


def config_from_flags(args: argparse.Namespace) -> LabelJobConfig:
    return LabelJobConfig(  # local paths made absolute: Ray workers run in other directories
        vocab=absolute_vocab(args.vocab),
        input=absolute_uri(args.input),
        output=absolute_uri(args.output),
        weights=ModelChoice.from_flags(
            args.model,
            absolute_uri(args.checkpoint) if args.checkpoint else None,
            absolute_uri(args.model_config) if args.model_config else None,
        ),
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        gpus_per_actor=args.gpus_per_actor,
        torch_threads=args.torch_threads,
        short_side=args.short_side,
        storage_options=args.storage_options,
        overwrite=args.overwrite,
        max_error_ratio=args.max_error_ratio,
        preview=args.preview,
        rows_per_file=args.rows_per_file,
        vocab_cache=absolute_uri(args.vocab_cache) if args.vocab_cache else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    checked = config_and_taxonomy(lambda: config_from_flags(args))
    if checked is None:
        return 2
    config, taxonomy = checked

    from pipeline.inputs import InputError
    from pipeline.labeling.job import plan_label_job, run_label_job
    from pipeline.weights import WeightsError

    try:  # input, output and weights are checked before Ray starts
        plan = plan_label_job(config, taxonomy, smoke_if_no_weights=args.smoke_if_no_weights)
    except (InputError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    import ray

    ray.init(logging_level="WARNING")
    try:
        summary = run_label_job(plan)
    finally:
        ray.shutdown()
    counts = summary.manifest["counts"]
    print(
        f"run {summary.run_id}: {counts['labeled']} labeled, {counts['failed']} failed, {counts['skipped']} skipped "
        f"in {summary.wall_time_s:.1f}s; manifest {config.output.rstrip('/')}/_manifest.json"
    )
    if not summary.manifest["labels_meaningful"]:
        print("(smoke test: random weights, labels meaningless)")
    if summary.error_ratio > config.max_error_ratio:
        print(f"error: {summary.error_ratio:.1%} of images failed (max {config.max_error_ratio:.1%})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

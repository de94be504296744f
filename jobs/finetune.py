"""Fine-tune SAN's side adapter on your own labels with Ray Train; export a model for jobs/label.py.

    python jobs/finetune.py --vocab taxonomy.yaml --train s3://bucket/train.parquet --val s3://bucket/val.parquet \\
        --init san-vit-b16 --storage s3://bucket/runs/ft1 --workers 2 --gpus-per-worker 1 --max-steps 20000

Runs on a local Ray started in-process, or on a cluster when started by `ray job submit` (or with
RAY_ADDRESS set). Exit codes: 0 trained and exported; 1 the run could not start or failed;
2 invalid flags or taxonomy (checked before Ray starts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from jobs.label import config_and_taxonomy  # noqa: E402
from pipeline.storage import absolute_uri, absolute_vocab  # noqa: E402
from schemas.jobs import FinetuneConfig, ModelChoice  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobs/finetune.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", required=True, help="taxonomy.yaml (path or URI) or a shipped name: ade150, ...")
    parser.add_argument(
        "--train", required=True, help="manifest (.parquet/.csv: image_uri, label_uri) or DATASET/images/<split>"
    )
    parser.add_argument("--val", help="validation pairs, same forms as --train")
    parser.add_argument("--init", default="san-vit-b16", help="preset name or full checkpoint to start from")
    parser.add_argument("--init-config", help="JSON model config for an --init checkpoint that carries none")
    parser.add_argument("--storage", required=True, help="run folder, local or s3://: checkpoints and exported model")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (DDP ranks)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--torch-threads", type=int, default=None, help="threads per CPU worker")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4, help="global batch, split evenly over the workers")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--grad-clip", type=float, default=0.01, help="full-model gradient-norm clip")
    parser.add_argument("--crop-size", type=int, default=640)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 on GPU")
    parser.add_argument("--eval-every", type=int, default=None, help="validation mIoU every N steps")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--checkpoints-to-keep", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--max-failures", type=int, default=3, help="worker-group restarts after failures")
    parser.add_argument("--loaders", type=int, default=2, help="data-loading actors (decode + augment)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue the run already in --storage")
    parser.add_argument("--storage-options", type=json.loads, default={}, help="JSON passed to fsspec")
    return parser


def config_from_flags(args: argparse.Namespace) -> FinetuneConfig:
    init = ModelChoice.from_init(args.init, args.init_config)
    return FinetuneConfig(  # local paths made absolute: Ray workers run in other directories
        vocab=absolute_vocab(args.vocab),
        train=absolute_uri(args.train),
        val=absolute_uri(args.val) if args.val else None,
        init=ModelChoice(
            model=init.model,
            checkpoint=absolute_uri(init.checkpoint) if init.checkpoint else None,
            model_config_uri=absolute_uri(init.model_config_uri) if init.model_config_uri else None,
        ),
        storage=absolute_uri(args.storage),
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        torch_threads=args.torch_threads,
        max_steps=args.max_steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        crop_size=args.crop_size,
        precision=args.precision,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        checkpoints_to_keep=args.checkpoints_to_keep,
        log_every=args.log_every,
        max_failures=args.max_failures,
        loaders=args.loaders,
        seed=args.seed,
        resume=args.resume,
        storage_options=args.storage_options,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    checked = config_and_taxonomy(lambda: config_from_flags(args))
    if checked is None:
        return 2
    config, taxonomy = checked

    from pipeline.inputs import InputError
    from pipeline.training.job import FinetuneError, plan_finetune, run_finetune
    from pipeline.weights import WeightsError

    try:  # data, storage and weights are checked before Ray starts
        plan = plan_finetune(config, taxonomy)
    except (InputError, WeightsError, FinetuneError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    import ray

    # A Ray started here needs CPUs for data loading beside the training workers; on a machine with
    # fewer cores than that, declare more (they are shared, not reserved). Never when joining a cluster.
    needed = int(config.workers * config.cpus_per_worker) + 2
    small = not os.environ.get("RAY_ADDRESS") and (os.cpu_count() or 1) < needed
    ray.init(num_cpus=needed if small else None, logging_level="WARNING")
    try:
        result = run_finetune(plan)
    except Exception as e:
        print(f"error: fine-tuning failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        ray.shutdown()
    print(f"label with: python jobs/label.py --checkpoint {result.export_uri} --vocab {config.vocab} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())

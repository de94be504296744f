"""`san`: one command for every job.

    san label | finetune | evaluate | export | push | report | demo | verify | taxonomy check  [flags]

Each subcommand is also a plain script (`python jobs/label.py ...`), which is what
`ray job submit --working-dir .` runs on a cluster. Flags mean the same in every job: `--input`
what it reads, `--output` what it writes, `--vocab` the taxonomy, `--model NAME` or
`--checkpoint URI` (with `--model-config`) the weights, `--storage-options` fsspec options,
`--log-level`/`-v`/`-q` how much it says.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

from jobs import demo, evaluate, export, finetune, label, push, report, verify  # noqa: E402
from schemas import taxonomy  # noqa: E402


def _run_taxonomy(args: argparse.Namespace) -> int:
    return taxonomy.check(args.file)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="san",
        description="Open-vocabulary semantic segmentation labels with SAN, at scale on Ray.",
        epilog="`san COMMAND --help` lists a command's flags.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    jobs = {
        "label": label,
        "finetune": finetune,
        "evaluate": evaluate,
        "export": export,
        "push": push,
        "report": report,
        "demo": demo,
        "verify": verify,
    }
    for name, module in jobs.items():
        sub = commands.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    description = "Check a taxonomy before renting any GPU (exit 2 with every problem and its line)."
    sub = commands.add_parser("taxonomy", help=description, description=description)
    checks = sub.add_subparsers(dest="action", required=True, metavar="check")
    check = checks.add_parser("check", help=description)
    check.add_argument("file", metavar="TAXONOMY", help="taxonomy.yaml (path or URI) or a shipped vocabulary")
    check.set_defaults(run=_run_taxonomy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def _legacy(command: str) -> int:
    print(
        f"warning: san-{command} is deprecated and will be removed in the next release; use `san {command}`",
        file=sys.stderr,
    )
    return main([command, *sys.argv[1:]])


def legacy_label() -> int:
    """The previous release's `san-label` command."""
    return _legacy("label")


def legacy_finetune() -> int:
    """The previous release's `san-finetune` command."""
    return _legacy("finetune")


if __name__ == "__main__":
    sys.exit(main())

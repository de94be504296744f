"""Prove that this port is SAN, against outputs and checkpoint manifests of the published code.

    san verify parity tests/fixtures/parity/tiny_a
    san verify video tests/fixtures/parity/tiny_video_a
    san verify manifest tests/fixtures/parity/manifests/san_vit_b_16.json

Exit codes: 0 every tensor matches (within 1e-4) or lands; 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

DESCRIPTION = "Check the port against the published SAN's outputs and checkpoint manifests."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    checks = parser.add_subparsers(dest="command", required=True, metavar="{parity,video,manifest}")
    checks.add_parser("parity", help="compare every tensor with a reference fixture folder").add_argument("directory")
    checks.add_parser("video", help="compare every stage of the video inference with a fixture folder").add_argument(
        "directory"
    )
    checks.add_parser("manifest", help="map a published checkpoint's tensor manifest onto its preset").add_argument(
        "file"
    )


def run(args: argparse.Namespace) -> int:
    from san_core import verify  # torch and the model: imported only when a check runs

    return verify.run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="san verify", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

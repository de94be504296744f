"""Export a labeling output for annotation tools.

python jobs/export.py --format coco --input s3://bucket/labels/ --vocab taxonomy.yaml --to labels.coco.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script

import fsspec  # noqa: E402

from pipeline.exports.coco import to_coco
from pipeline.results import read_output_rows  # noqa: E402
from schemas.taxonomy import TaxonomyError, load_taxonomy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/export.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=["coco"], default="coco")
    parser.add_argument("--input", required=True, help="the labeling job's --output")
    parser.add_argument("--vocab", required=True, help="the taxonomy the output was labeled with")
    parser.add_argument("--to", required=True, help="where to write the JSON (path or URI)")
    parser.add_argument("--storage-options", type=json.loads, default={})
    args = parser.parse_args(argv)
    try:
        taxonomy = load_taxonomy(args.vocab, args.storage_options)
    except TaxonomyError as e:
        print(f"invalid taxonomy:\n{e}", file=sys.stderr)
        return 2
    coco = to_coco(read_output_rows(args.input, args.storage_options), taxonomy)
    with fsspec.open(args.to, "w", **args.storage_options) as f:
        json.dump(coco, f)
    print(f"{len(coco['images'])} images, {len(coco['annotations'])} annotations -> {args.to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

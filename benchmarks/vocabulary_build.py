"""Time to build the vocabulary embedding table (text encoder, vild templates) on this machine.

    python benchmarks/vocabulary_build.py [--sizes 1000,20000] [--towers tiny,san-vit-b16]

Random text-tower weights (the cost does not depend on them); no cache, so every class is
encoded: classes x 14 templates prompts. Prints a table of seconds and classes/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.vocabulary import load_or_build_vocabulary  # noqa: E402
from san_core.build import build_model  # noqa: E402
from san_core.presets import get_preset  # noqa: E402
from schemas.model_config import SanModelConfig  # noqa: E402
from schemas.taxonomy import Taxonomy  # noqa: E402

TINY_CONFIG = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "parity" / "tiny_a" / "config.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,20000")
    parser.add_argument("--towers", default="tiny,san-vit-b16")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("| text tower | classes | prompts encoded | seconds | classes/s |")
    print("|---|---|---|---|---|")
    for tower in args.towers.split(","):
        config = SanModelConfig.from_json_file(TINY_CONFIG) if tower == "tiny" else get_preset(tower).config
        torch.manual_seed(0)
        model = build_model(config)
        for size in (int(s) for s in args.sizes.split(",")):
            taxonomy = Taxonomy(
                name="bench", classes=[{"id": i, "name": f"object number {i}"} for i in range(1, size + 1)]
            )
            start = time.perf_counter()
            table = load_or_build_vocabulary(taxonomy, model, cache_dir=None)
            seconds = time.perf_counter() - start
            prompts = size * len(taxonomy.template_list())
            print(
                f"| {tower} (width {table.embeddings.shape[1]}) | {size:,} | {prompts:,} | {seconds:.1f} | "
                f"{size / seconds:,.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

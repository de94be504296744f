"""Tasks per second of `san push label-studio` into a real Label Studio server on this machine.

Labels four photographs with the parity fixture's tiny model (short side 128: real masks, as
brush RLE), copies their rows under N image names (default 10,000), starts Label Studio from
`.venv-label-studio` (`make .venv-label-studio`) on 127.0.0.1 with a fresh database, and times:
the first push (every task new), the same push again (nothing to do), and a push of a re-labeled
run (every prediction replaced), each as `san push label-studio` runs it.

    .venv/bin/python benchmarks/push_label_studio.py [--tasks 10000] [--batch-size 250]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
TOKEN = "benchmark-token"


def _label(images: Path, output: Path, weights: list[str]) -> None:
    command = [sys.executable, str(REPO / "jobs" / "cli.py"), "label", "--vocab", "voc20", "--input", str(images)]
    command += ["--output", str(output), "--short-side", "128", "-q", *weights]
    command += ["--vocab-cache", str(output.parent / "vocab-cache")]  # not the user's cache
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def _copies(labels: Path, into: Path, tasks: int) -> None:
    """`tasks` rows: the labeled rows of `labels` under as many image names, 500 to a file."""
    into.mkdir(parents=True)
    for path in sorted(labels.glob("labels-*.parquet")):
        table = pq.read_table(path)
        metadata = table.schema.metadata
        rows = table.filter(pc.is_null(table["error"]))
        per_file = max(1, 500 // rows.num_rows)
        copies = -(-tasks // rows.num_rows)
        for start in range(0, copies, per_file):
            parts = []
            for copy in range(start, min(copies, start + per_file)):
                uris = pa.array([f"{u}?copy={copy}" for u in rows["image_uri"].to_pylist()])
                parts.append(rows.set_column(rows.schema.get_field_index("image_uri"), "image_uri", uris))
            combined = pa.concat_tables(parts).replace_schema_metadata(metadata)
            pq.write_table(combined, into / f"labels-{start:06d}.parquet")
        break  # the first file's rows are enough to copy


def _push(url: str, labels: Path, project: str, batch_size: int) -> tuple[float, str]:
    env = dict(os.environ, LABEL_STUDIO_URL=url, LABEL_STUDIO_API_KEY=TOKEN)
    command = [sys.executable, str(REPO / "jobs" / "cli.py"), "push", "label-studio", "--input", str(labels)]
    command += ["--vocab", "voc20", "--project", project, "--batch-size", str(batch_size), "-q"]
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return time.monotonic() - started, result.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args()
    import skimage.data

    sys.path.insert(0, str(REPO / "tests"))
    from image_fixtures import jpeg_bytes
    from label_studio_server import LABEL_STUDIO, label_studio_server

    if not LABEL_STUDIO.exists():
        sys.exit(f"{LABEL_STUDIO} is missing: make .venv-label-studio")

    from san_core.build import load_model
    from san_core.checkpoint import save_checkpoint

    root = Path(tempfile.mkdtemp(prefix="push-bench-"))
    images = root / "images"
    images.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        (images / f"{name}.jpg").write_bytes(jpeg_bytes(getattr(skimage.data, name)()))
    tiny = REPO / "tests" / "fixtures" / "parity" / "tiny_a"
    first = ["--checkpoint", str(tiny / "checkpoint.pth"), "--model-config", str(tiny / "config.json")]
    loaded = load_model(checkpoint=first[1], model_config=first[3])
    save_checkpoint(loaded.model, loaded.model.config, str(root / "ft.safetensors"))
    _label(images, root / "labels-a", first)
    _label(images, root / "labels-b", ["--checkpoint", str(root / "ft.safetensors")])
    _copies(root / "labels-a", root / "many-a", args.tasks)
    _copies(root / "labels-b", root / "many-b", args.tasks)

    data = root / "label-studio"
    data.mkdir()
    with label_studio_server(data, TOKEN, env=dict(os.environ, HOME=str(root))) as url:
        rows = []
        for what, labels in (("first push, all new", "many-a"), ("same push again", "many-a"),
                             ("re-labeled run, all replaced", "many-b")):  # fmt: skip
            seconds, summary = _push(url, root / labels, "benchmark", args.batch_size)
            rows.append((what, seconds, summary))
    print(f"san push label-studio, {args.tasks:,} tasks of 4 photos' tiny-model labels (brush RLE), batches of "
          f"{args.batch_size}, Label Studio 1.23 (SQLite) on this machine\n")  # fmt: skip
    print("| push | seconds | tasks/s | summary |")
    print("| --- | --- | --- | --- |")
    for what, seconds, summary in rows:
        print(f"| {what} | {seconds:.1f} | {args.tasks / seconds:,.0f} | {summary.split(': ', 1)[1]} |")


if __name__ == "__main__":
    main()

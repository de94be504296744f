"""Planning at scale: an up-to-date nightly re-run over N inputs, of which all but 1,000 already
have a row in the output.

    python benchmarks/planning.py [--sizes 100000,1000000,10000000] [--new 1000]

For each N it writes a Parquet manifest of N image URIs and an output folder holding rows for all
but the last `--new` of them, as earlier runs of the job leave it: result files of 256 rows
(the default `--rows-per-file`) carrying the current provenance, and one row index per run (ten
runs). The `--new` images are real JPEGs. Then, each in a fresh process:

- plan: `plan_label_job` alone (list the manifest, read the output's indexes, the anti-join),
  with the driver's peak RSS (the model load and imports included; printed separately);
- label: the whole `san label` job (plan again, then label the new images with the tiny parity
  model on a local Ray), wall time.

`--s3` adds a table on a moto S3 server: the same 20,000 rows in 20 to 2,000 result files,
planned with the runs' indexes and without them (every file read, in parallel).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

TINY = ROOT / "tests" / "fixtures" / "parity" / "tiny_a"
ROWS_PER_FILE = 256
RUNS = 10


def job_flags(manifest: Path | str, output: Path | str) -> list[str]:
    return [
        "--vocab", "voc20", "--input", str(manifest), "--output", str(output),
        "--checkpoint", str(TINY / "checkpoint.pth"), "--model-config", str(TINY / "config.json"),
        "--short-side", "160", "--batch-size", "8", "--log-level", "WARNING",
    ]  # fmt: skip


def config_of(flags: list[str]):
    from schemas.cli import add_config_flags, add_logging_flags, config_and_taxonomy
    from schemas.jobs import LabelJobConfig

    parser = argparse.ArgumentParser()
    add_config_flags(parser, LabelJobConfig)
    add_logging_flags(parser)
    return config_and_taxonomy(parser.parse_args(flags), LabelJobConfig)


def current_provenance(flags: list[str]):
    from pipeline.labeling.provenance import make_provenance
    from pipeline.weights import resolve_weights

    config, taxonomy = config_of(flags)
    weights = resolve_weights(config.weights, config.storage_options)
    model, digest = weights.load_checked("cpu")
    return make_provenance(config, taxonomy, weights, digest, model.config)


def write_new_images(directory: Path, count: int) -> list[str]:
    import skimage.data
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    paths = []
    for i in range(count):
        crop = photos[i % 4][(i * 7) % 100 :, (i * 13) % 100 :][:240, :320]
        path = directory / f"new-{i:05d}.jpg"
        Image.fromarray(crop).save(path, quality=85)
        paths.append(str(path))
    return paths


def old_uri(i: int) -> str:
    return f"s3://photo-archive/cameras/{i % 997:03d}/{i:010d}.jpg"


def write_earlier_output(fs, root: str, count: int, provenance, index: bool = True) -> int:
    """`count` rows (URIs old_uri(0..count-1)) in result files of ROWS_PER_FILE rows, as RUNS
    earlier runs wrote them, each run's row index beside them. Returns the number of files."""
    from pipeline.store.layout import result_file_name, result_file_stamps
    from pipeline.store.row_index import IndexBuilder, ResultFile, index_path
    from schemas.output import label_row_schema

    fs.makedirs(root, exist_ok=True)
    files = -(-count // ROWS_PER_FILE)
    per_run = -(-files // RUNS)
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(RUNS):
            run_id = f"20260101T{run:02d}0000Z-bench{run:03d}"
            schema = label_row_schema(provenance, run_id)
            written = []
            for number in range(run * per_run, min(files, (run + 1) * per_run)):
                start, stop = number * ROWS_PER_FILE, min(count, (number + 1) * ROWS_PER_FILE)
                n = stop - start
                uris = pa.array([old_uri(i) for i in range(start, stop)])
                columns = {
                    "image_uri": uris,
                    "segments": pa.array([[]] * n, schema.field("segments").type),
                    "model_id": pa.array(["tiny"] * n),
                    "taxonomy_digest": pa.array([provenance.taxonomy.digest] * n),
                }
                table = pa.table([columns.get(f.name, pa.nulls(n, f.type)) for f in schema], schema=schema)
                path = f"{root.rstrip('/')}/{result_file_name(f'{run:04d}{number:028x}', 0)}"
                with fs.open(path, "wb") as f:
                    pq.write_table(table, f)
                written.append((path, uris))
            if index and written:
                stamps = result_file_stamps(fs, root)
                builder = IndexBuilder(os.path.join(scratch, f"{run}.arrow"))
                for path, uris in written:
                    keys = pa.table(
                        {
                            "file": pa.array([0] * len(uris), pa.int32()),
                            "source_uri": uris,
                            "is_error": pa.array([False] * len(uris)),
                            "error_kind": pa.nulls(len(uris), pa.string()),
                        }
                    )
                    builder.add(ResultFile(path, run_id, provenance.model_dump_json(), stamps[path]), keys)
                builder.write(fs, root, index_path(root, run_id))
    return files


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited through exec
    from the forked parent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plan_only(flags: list[str]) -> None:
    """In a fresh process: time plan_label_job, print JSON with its peak RSS."""
    from pipeline.labeling.job import plan_label_job

    config, taxonomy = config_of(flags)
    before = peak_rss_mib()
    start = time.perf_counter()
    plan = plan_label_job(config, taxonomy)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mib": peak_rss_mib(), "imports_mib": before, "todo": len(plan.todo)}))


def in_subprocess(home: Path, *args: str, tree: Path = ROOT) -> dict:
    """Run this script's `args[0]` step in a fresh process whose home is `home` (the vocabulary
    cache and Ray's files land there, not in the caller's home), from the checkout `tree` (its
    own copy of this script, so that a baseline worktree plans with its own code)."""
    env = dict(os.environ, HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    command = [sys.executable, str(tree / "benchmarks" / "planning.py"), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tree, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def label_job(flags: list[str]) -> None:
    from jobs.label import main

    start = time.perf_counter()
    code = main(flags)
    print(json.dumps({"seconds": time.perf_counter() - start, "exit": code}))


def local_table(sizes: list[int], new: int, baseline: Path | None) -> None:
    import fsspec

    print(f"Local disk, {os.cpu_count()} CPUs; all but {new:,} inputs already labeled; {RUNS} earlier runs.")
    if baseline is not None:
        print(f"Baseline: the checkout at {baseline}, planning the same folder just before this one.")
    print("| inputs | result files | write fixture s | plan s (baseline) | driver peak RSS MiB (after imports) "
          "(baseline) | label the new, whole job s |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="san-plan-bench-") as tmp:
            work = Path(tmp)
            new_uris = write_new_images(work / "new", new)
            flags = job_flags(work / "manifest.parquet", work / "out")
            started = time.perf_counter()
            uris = pa.concat_arrays(
                [
                    pa.array([old_uri(i) for i in range(s, min(n - new, s + 1_000_000))])
                    for s in range(0, n - new, 1_000_000)
                ]
                + [pa.array(new_uris)]
            )
            pq.write_table(pa.table({"uri": uris}), work / "manifest.parquet")
            del uris
            files = write_earlier_output(
                fsspec.filesystem("file"), str(work / "out"), n - new, current_provenance(flags)
            )
            fixture = time.perf_counter() - started
            (work / "home").mkdir()
            before = ""
            if baseline is not None:
                base = in_subprocess(work / "home", "--plan-only", *flags, tree=baseline)
                assert base["todo"] == new, base
                before = f" ({base['seconds']:.1f})", f" ({base['peak_mib']:.0f})"
            plan = in_subprocess(work / "home", "--plan-only", *flags)
            assert plan["todo"] == new, plan
            labeled = in_subprocess(work / "home", "--label-job", *flags)
            assert labeled["exit"] == 0, labeled
            manifest = json.loads((work / "out" / "_manifest.json").read_text())
            assert manifest["counts"]["labeled"] == new and manifest["counts"]["skipped"] == n - new, manifest
            print(
                f"| {n:,} | {files:,} | {fixture:.0f} | {plan['seconds']:.1f}{before[0] if before else ''} | "
                f"{plan['peak_mib']:.0f} ({plan['imports_mib']:.0f}){before[1] if before else ''} | "
                f"{labeled['seconds']:.1f} |",
                flush=True,
            )


def s3_table(rows: int, file_counts: list[int]) -> None:
    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir("bench")
    print(f"\nmoto S3 on 127.0.0.1: {rows:,} rows in result files of different sizes; plan = scan + anti-join.")
    print("| result files | plan with the runs' indexes, s | plan reading every file (32 at once), s |")
    print("|---|---|---|")
    global ROWS_PER_FILE
    try:
        with tempfile.TemporaryDirectory() as tmp:
            flags = job_flags(Path(tmp) / "m.parquet", "s3://bench/x")
            provenance = current_provenance(flags)
            for count in file_counts:
                ROWS_PER_FILE = -(-rows // count)
                root = f"bench/out-{count}"
                write_earlier_output(fs, root, rows, provenance)
                timings = []
                for indexed in (True, False):
                    if not indexed:
                        fs.rm(f"{root}/_row_index", recursive=True)
                    timings.append(plan_scan(fs, root, [old_uri(i) for i in range(rows)] + ["s3://new/1.jpg"]))
                print(f"| {count:,} | {timings[0]:.2f} | {timings[1]:.2f} |", flush=True)
    finally:
        server.stop()


def plan_scan(fs, root: str, inputs: list[str]) -> float:
    from pipeline.store.join import AntiJoin
    from pipeline.store.scan import scan_output

    fs.invalidate_cache()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        join = AntiJoin(scratch)
        join.add_inputs(pa.array(inputs))
        state = scan_output(fs, root, join, scratch)
        decision = join.decide(state.file_rank(), "none", sort_by_uri=True)
        join.close()
    assert decision.todo.to_pylist() == ["s3://new/1.jpg"], decision.todo
    return time.perf_counter() - start


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--plan-only", "--label-job"):
        (plan_only if sys.argv[1] == "--plan-only" else label_job)(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000")
    parser.add_argument("--new", type=int, default=1000)
    parser.add_argument("--s3", action="store_true", help="also the moto S3 table")
    parser.add_argument("--s3-only", action="store_true")
    parser.add_argument(
        "--baseline", type=Path, help="a checkout of an older commit (git worktree add DIR COMMIT) to plan beside"
    )
    args = parser.parse_args()
    np.random.seed(0)
    if not args.s3_only:
        local_table([int(s) for s in args.sizes.split(",")], args.new, args.baseline)
    if args.s3 or args.s3_only:
        s3_table(20_000, [20, 200, 2000])


if __name__ == "__main__":
    main()

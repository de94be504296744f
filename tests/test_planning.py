"""Planning at scale: the anti-join (DuckDB, spilling to disk) decides what a plain Python reading of every
row would, the runs' row indexes stand in for reading every result file (and only while those
files exist), and on S3 the plan's requests do not grow with the number of result files."""

from __future__ import annotations

import random
import tempfile
from collections import defaultdict
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from faults import FaultyProxy

from pipeline.store.join import AntiJoin
from pipeline.store.layout import INDEX_DIR, result_file_stamps
from pipeline.store.row_index import IndexBuilder, index_path, read_keys
from pipeline.store.scan import scan_output
from schemas.output import label_row_schema


def test_the_join_decides_past_its_memory_limit(caplog):
    """More URIs than DuckDB may hold in memory (600,000 of 60-odd bytes and 400,000 row keys in
    32 MB, which one pass over them all runs out of): in passes over shares of the URIs, as many
    as it takes, spilling to the scratch folder, it decides the same."""
    caplog.set_level("INFO", logger="pipeline.store.join")
    n = 600_000
    uris = pa.array([f"s3://bucket/images/{i:08d}/{'x' * 40}.jpg" for i in range(n)])
    with tempfile.TemporaryDirectory() as scratch:
        # planned as one pass, which runs out of memory: it starts again in 2, 4, then 8 passes
        join = AntiJoin(scratch, memory_limit="32MB", rows_per_pass=10_000_000)
        for start in range(0, n, 100_000):
            join.add_inputs(uris.slice(start, 100_000))
        labeled = uris.filter(pa.array(np.arange(n) % 3 != 0))
        join.add_rows(
            pa.table(
                {
                    "file": pa.array(np.arange(len(labeled)) % 50, pa.int32()),
                    "source_uri": labeled,
                    "is_error": pa.array(np.zeros(len(labeled), bool)),
                    "error_kind": pa.nulls(len(labeled), pa.string()),
                }
            )
        )
        decision = join.decide(np.arange(50), "none", sort_by_uri=False)
        join.close()
    assert "planning in 1 passes ran out of its 32MB" in caplog.text  # the case this test is for
    assert decision.inputs == n
    assert decision.todo.to_pylist() == uris.to_pylist()[::3]
    assert not decision.superseded and not decision.retried


def _reference(inputs, files, retry_errors):
    """What the plan must decide, the obvious way: files is [(rank, [(source, is_error, kind)])],
    where a source may have several rows in one file (a video's frames)."""
    latest, holders = {}, defaultdict(set)
    for number, (_, rows) in sorted(enumerate(files), key=lambda item: item[1][0]):
        mine = defaultdict(list)
        for uri, is_error, kind in rows:
            mine[uri].append((is_error, kind))
            holders[uri].add(number)
        for uri, its_rows in mine.items():
            latest[uri] = (number, its_rows)
    superseded = defaultdict(set)
    for uri, numbers in holders.items():
        for number in numbers - {latest[uri][0]}:
            superseded[number].add(uri)

    def again(rows):
        return any(
            is_error and (retry_errors == "all" or (retry_errors == "transient" and kind == "transient"))
            for is_error, kind in rows
        )

    done = {uri for uri, (_, rows) in latest.items() if not again(rows)}
    distinct = list(dict.fromkeys(inputs))
    todo = [u for u in distinct if u not in done]
    retried = defaultdict(set)
    for uri in todo:
        if uri in latest:
            retried[latest[uri][0]].add(uri)
    return todo, len(distinct), dict(superseded), dict(retried)


def _as_sets(mapping):
    return {number: set(uris.to_pylist()) for number, uris in mapping.items()}


@pytest.mark.parametrize("rows_per_pass", [1_000_000, 700])  # one pass, and several (each a share of the URIs)
@pytest.mark.parametrize("retry_errors", ["none", "transient", "all"])
def test_the_join_decides_what_reading_every_row_would(retry_errors, rows_per_pass):
    rng = random.Random(7)
    universe = [f"s3://b/{rng.randrange(10**9):09d}.jpg" for _ in range(4000)]
    inputs = [rng.choice(universe) for _ in range(5000)]  # repeats, as manifests have
    files = []
    for rank in rng.sample(range(30), 30):  # ranks in no particular order
        rows = [
            (uri, rng.random() < 0.2, rng.choice(["transient", "permanent", None]))
            for uri in dict.fromkeys(rng.sample(universe, rng.randrange(1, 300)))
            # a video's frames: several rows of one source in one file, most of them fine
            for _ in range(rng.choice([1, 1, 1, 5]))
        ]
        files.append((rank, rows))
    with tempfile.TemporaryDirectory() as scratch:
        join = AntiJoin(scratch, rows_per_pass=rows_per_pass)
        for start in range(0, len(inputs), 999):
            join.add_inputs(pa.array(inputs[start : start + 999]))
        for number, (_, rows) in enumerate(files):
            uris, errors, kinds = zip(*rows, strict=True)
            join.add_rows(
                pa.table(
                    {
                        "file": pa.array([number] * len(rows), pa.int32()),
                        "source_uri": uris,
                        "is_error": errors,
                        "error_kind": pa.array(kinds, pa.string()),
                    }
                )
            )
        decision = join.decide(np.array([rank for rank, _ in files]), retry_errors, sort_by_uri=False)
    todo, distinct, superseded, retried = _reference(inputs, files, retry_errors)
    assert decision.todo.to_pylist() == todo  # in the manifest's order
    assert decision.inputs == distinct
    assert _as_sets(decision.superseded) == superseded and superseded
    assert _as_sets(decision.retried) == retried and (retried or retry_errors == "none")


def _result_file(path: Path, run_id: str, rows: list[tuple[str, str | None]]) -> None:
    table = pa.Table.from_pylist(
        [
            {"image_uri": u, "segments": [], "model_id": "m", "taxonomy_digest": "t", "error": e,
             "error_kind": "permanent" if e else None}
            for u, e in rows
        ],
        schema=label_row_schema(run_id=run_id),
    )  # fmt: skip
    pq.write_table(table, path)


def _plan(fs, root: str, inputs: list[str]):
    with tempfile.TemporaryDirectory() as scratch:
        join = AntiJoin(scratch)
        join.add_inputs(pa.array(inputs))
        state = scan_output(fs, root, join, scratch)
        return state, join.decide(state.file_rank(), "all", sort_by_uri=True)


def _index(fs, root: str, name: str, paths: list[str]) -> None:
    builder = IndexBuilder(tempfile.mktemp(suffix=".arrow"))
    fs.invalidate_cache()
    stamps = result_file_stamps(fs, root)
    for path in paths:
        builder.add(*read_keys(fs, path, stamps[path]))
    builder.write(fs, root, index_path(root, name))


def test_indexes_stand_in_for_their_files_only_while_the_files_exist(tmp_path):
    fs = fsspec.filesystem("file")
    root = str(tmp_path)
    _result_file(tmp_path / "labels-a_000000.parquet", "20260101T000000Z-a", [("u1", None), ("u2", "bad")])
    _result_file(tmp_path / "labels-a_000001.parquet", "20260101T000000Z-a", [("u3", None)])
    _index(fs, root, "20260101T000000Z-a", [str(p) for p in sorted(tmp_path.glob("labels-a_*.parquet"))])
    # a later run's file that its index never covered (killed before it wrote one), and a damaged index
    _result_file(tmp_path / "labels-b_000000.parquet", "20260102T000000Z-b", [("u2", None), ("u4", None)])
    (tmp_path / INDEX_DIR / "20260102T000000Z-b.arrow").write_bytes(b"ARROW1 cut short")

    inputs = ["u1", "u2", "u3", "u4", "u5"]
    state, decision = _plan(fs, root, inputs)
    assert decision.todo.to_pylist() == ["u5"]
    assert _as_sets(decision.superseded) == {state.paths.index(str(tmp_path / "labels-a_000000.parquet")): {"u2"}}
    assert state.damaged_indexes == [str(tmp_path / INDEX_DIR / "20260102T000000Z-b.arrow")]
    assert [f.path for f in state.unindexed.files] == [str(tmp_path / "labels-b_000000.parquet")]

    # a file rewritten in place under its own name: the index's entry for it is void
    _result_file(tmp_path / "labels-a_000000.parquet", "20260101T000000Z-a", [("u1", "bad"), ("u2", "bad")])
    fs.invalidate_cache()
    state, decision = _plan(fs, root, inputs)
    assert decision.todo.to_pylist() == ["u1", "u5"]
    assert sorted(f.path.rsplit("/", 1)[1] for f in state.unindexed.files) == [
        "labels-a_000000.parquet", "labels-b_000000.parquet"
    ]  # fmt: skip

    # the index says u3 is done, but its file is gone: u3 is labeled again, and the index is
    # believed for nothing else it lists
    (tmp_path / "labels-a_000001.parquet").unlink()
    fs.invalidate_cache()
    state, decision = _plan(fs, root, inputs)
    assert decision.todo.to_pylist() == ["u1", "u3", "u5"]
    # an index whose files are all gone covers nothing and is marked for removal
    (tmp_path / "labels-a_000000.parquet").unlink()
    fs.invalidate_cache()
    state, decision = _plan(fs, root, inputs)
    assert decision.todo.to_pylist() == ["u1", "u3", "u5"]
    assert state.stale_indexes == [str(tmp_path / INDEX_DIR / "20260101T000000Z-a.arrow")]


def test_on_s3_the_plan_does_not_read_more_as_result_files_multiply(s3_server, s3_bucket, tmp_path):
    """The same 2,000 rows in 4 files and in 40: with the run's index, planning makes the same
    number of requests; reading the files themselves, at least one per file."""
    proxy = FaultyProxy(int(s3_server.rsplit(":", 1)[1]))
    fs = fsspec.filesystem("s3", skip_instance_cache=True, endpoint_url=proxy.endpoint)
    requests = {}
    try:
        for count in (4, 40):
            root = f"{s3_bucket}/labels-{count}".removeprefix("s3://")
            uris = [f"s3://in/{i:05d}.jpg" for i in range(2000)]
            paths = []
            for part in range(count):
                local = tmp_path / f"{count}-{part}.parquet"
                share = uris[part * len(uris) // count : (part + 1) * len(uris) // count]
                _result_file(local, "20260101T000000Z-a", [(u, None) for u in share])
                paths.append(f"{root}/labels-{count:04d}{part:028d}_000000.parquet")
                fs.put(str(local), paths[-1])
            for indexed in (True, False):
                if indexed:
                    _index(fs, root, "20260101T000000Z-a", paths)
                else:
                    fs.rm(f"{root}/{INDEX_DIR}", recursive=True)
                fs.invalidate_cache()
                proxy.requests.clear()
                state, decision = _plan(fs, root, uris + ["s3://in/new.jpg"])
                assert decision.todo.to_pylist() == ["s3://in/new.jpg"] and len(state.complete) == count
                requests[(count, indexed)] = sum(proxy.requests.values())
    finally:
        proxy.close()
    assert requests[(40, True)] == requests[(4, True)], requests
    assert requests[(40, False)] >= 40 > 4 * requests[(40, True)], requests  # at least one per file


def test_the_store_reads_its_own_files_only(tmp_path):
    """Every reader goes through LabelStore: its own result files, chosen columns, rows by number
    (across row groups), no manifest while a run is unfinished."""
    from pipeline.store import LabelStore

    rows = [(f"u{i}", None) for i in range(10)]
    _result_file(tmp_path / "labels-a_000000.parquet", "20260101T000000Z-a", rows[:4])
    table = pq.read_table(tmp_path / "labels-a_000000.parquet")
    pq.write_table(table, tmp_path / "labels-b_000000.parquet", row_group_size=3)  # several row groups
    _result_file(tmp_path / "other_team.parquet", "20260101T000000Z-x", [("foreign", None)])
    store = LabelStore(str(tmp_path))
    assert [p.rsplit("/", 1)[1] for p in store.files()] == ["labels-a_000000.parquet", "labels-b_000000.parquet"]
    assert [r["image_uri"] for r in store.rows(["image_uri"])] == ["u0", "u1", "u2", "u3"] * 2
    assert set(next(store.rows(["image_uri", "error"]))) == {"image_uri", "error"}
    taken = store.take(store.files()[1], [3, 0, 2], ["image_uri"])
    assert taken.column("image_uri").to_pylist() == ["u0", "u2", "u3"]
    assert store.manifest() is None
    store.write_manifest({"run_id": "r"})
    assert store.manifest() == {"run_id": "r"}
    assert store.provenance() is None  # these files record no provenance (an earlier release's)

"""Which inputs still need labels, in bounded driver memory at any number of images.

An anti-join of the inputs against the output's row keys, run by DuckDB: the input URIs and the
row keys arrive as streams of Arrow batches and are appended to two tables; the decision is a few
SQL statements (per source: its place in the input, its latest rows, whether they ask to be
tried again; then the inputs that are left). DuckDB works in its own memory, bounded by
`MEMORY_LIMIT`, and spills to the planning's scratch folder beyond it; the driver's Python holds
one batch at a time and the answer.

DuckDB's grouping of strings still needs memory that grows with the rows grouped at once (600k
URIs and 400k row keys do not fit 32 MB in one pass on 2 threads, DuckDB 2.0), so the decision runs in
passes of at most about `ROWS_PER_PASS` rows, each over the share of the sources a hash of the
URI picks: at any number of inputs, each pass fits the same memory. Should a pass still run out
(more threads, longer URIs), the decision starts again in twice as many.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..retries import TRANSIENT
from .row_index import KEY_SCHEMA

log = logging.getLogger(__name__)

# DuckDB's own memory; past it, joins and aggregates spill to the scratch folder. The driver's
# imports and the model it loads to check the weights take about 1 GB beside it.
MEMORY_LIMIT = "128MB"
ROWS_PER_PASS = 7_000_000  # inputs and row keys grouped at once (10M of each: 3 passes, well within 128 MB)
MAX_PASSES = 64  # beyond, the out-of-memory error is raised: smaller shares would not help
THREADS = 4  # DuckDB's threads at most: each needs memory of its own within MEMORY_LIMIT
APPEND_ROWS = 1 << 16  # rows handed to DuckDB at once (callers often hand over a file's few hundred)
INPUT_SCHEMA = pa.schema([("source_uri", pa.string()), ("position", pa.int64())])
_RETRY_WHEN = {  # the error rows `--retry-errors` tries again, as SQL over the latest rows
    "none": "false",
    "transient": f"is_error AND coalesce(error_kind = '{TRANSIENT}', false)",
    "all": "is_error",
}


@dataclass
class Decision:
    """What the join decided."""

    todo: pa.StringArray  # inputs (images, videos) without rows that count (in input order, or sorted)
    inputs: int  # distinct inputs
    superseded: dict[int, pa.Array] = field(default_factory=dict)  # file id -> sources whose rows there lost
    retried: dict[int, pa.Array] = field(default_factory=dict)  # file id -> sources with error rows this run replaces

    @property
    def retried_count(self) -> int:
        return sum(len(uris) for uris in self.retried.values())


class _Appender:
    """Rows queued for one DuckDB table, handed over APPEND_ROWS at a time."""

    def __init__(self, db: duckdb.DuckDBPyConnection, table: str) -> None:
        self.db, self.table = db, table
        self._pending: list[pa.Table] = []
        self._rows = 0

    def append(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._rows += table.num_rows
        if self._rows >= APPEND_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        self.db.register("batch", pa.concat_tables(self._pending))
        self._pending, self._rows = [], 0
        self.db.execute(f"INSERT INTO {self.table} SELECT * FROM batch")
        self.db.unregister("batch")


class AntiJoin:
    """Inputs minus the sources that already have rows that count, in a DuckDB database under
    `scratch` (removed with the folder)."""

    def __init__(self, scratch: str, memory_limit: str = MEMORY_LIMIT, rows_per_pass: int = ROWS_PER_PASS) -> None:
        self.rows_per_pass = rows_per_pass
        self.memory_limit = memory_limit
        self.db = duckdb.connect()  # in memory: no write-ahead log; beyond the limit, blocks go to `spill`
        self.db.execute(f"SET memory_limit = '{memory_limit}'")
        self.db.execute(f"SET temp_directory = '{os.path.join(scratch, 'spill')}'")
        self.db.execute(f"SET threads = {min(THREADS, os.cpu_count() or 1)}")
        self.db.execute("SET preserve_insertion_order = false")  # the answers are ordered explicitly
        self.db.execute("CREATE TABLE inputs (source_uri VARCHAR, position BIGINT)")
        self.db.execute(
            "CREATE TABLE row_keys (file INTEGER, source_uri VARCHAR, is_error BOOLEAN, error_kind VARCHAR)"
        )
        self._inputs = _Appender(self.db, "inputs")
        self._rows = _Appender(self.db, "row_keys")
        self._positions = 0  # inputs seen so far: the next one's place in input order

    def add_inputs(self, uris: pa.Array) -> None:
        uris = pc.drop_null(uris.cast(pa.string()))
        uris = uris.filter(pc.greater(pc.utf8_length(uris), 0))
        positions = pa.array(np.arange(self._positions, self._positions + len(uris), dtype=np.int64))
        self._positions += len(uris)
        self._inputs.append(pa.table([uris, positions], schema=INPUT_SCHEMA))

    def add_rows(self, keys: pa.Table) -> None:
        """Row keys of result files (KEY_SCHEMA), `file` numbering the caller's list of files."""
        self._rows.append(keys.select(KEY_SCHEMA.names).cast(KEY_SCHEMA))

    def decide(self, file_rank: np.ndarray, retry_errors: str, sort_by_uri: bool) -> Decision:
        """`file_rank[file]` orders the files by age (higher = later run): of two files holding rows
        of one source, the later file's rows count. `retry_errors` (none/transient/all) names the
        error rows to try again."""
        self._inputs.flush()
        self._rows.flush()
        files = pa.array(np.arange(len(file_rank), dtype=np.int32))
        self.db.register("ranks", pa.table({"file": files, "rank": file_rank.astype(np.int64)}))
        grouped = self._count("row_keys") + self._count("inputs")
        passes = max(1, -(-grouped // self.rows_per_pass))
        while True:
            try:
                inputs = self._decide_in(passes, _RETRY_WHEN[retry_errors])
                break
            except duckdb.OutOfMemoryException:
                # more threads than this machine's 2 (each works in memory of its own), or URIs
                # longer than ours: smaller shares until a pass fits
                if passes >= MAX_PASSES:
                    raise
                log.info(f"planning in {passes} passes ran out of its {self.memory_limit}: trying {passes * 2}")
                passes *= 2
        order = "source_uri" if sort_by_uri else "position"
        todo = self.db.sql(f"SELECT source_uri FROM todo ORDER BY {order}").to_arrow_table()
        superseded = self.db.sql("SELECT * FROM superseded").to_arrow_table()
        retried = self.db.sql("SELECT * FROM retried").to_arrow_table()
        return Decision(
            todo.column("source_uri").combine_chunks().cast(pa.string()),
            inputs,
            _by_file(superseded),
            _by_file(retried),
        )

    def _count(self, table: str) -> int:
        return self.db.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0]

    def _decide_in(self, passes: int, again: str) -> int:
        """Decide in `passes` passes over hash shares of the URIs (results in the tables `todo`,
        `superseded` and `retried`); returns the number of distinct inputs."""
        run = self.db.execute
        run("CREATE OR REPLACE TABLE todo (source_uri VARCHAR, position BIGINT)")
        run("CREATE OR REPLACE TABLE superseded (file INTEGER, source_uri VARCHAR)")
        run("CREATE OR REPLACE TABLE retried (file INTEGER, source_uri VARCHAR)")
        shares = [f"hash(source_uri) % {passes} = {p}" for p in range(passes)] if passes > 1 else ["true"]
        return sum(self._decide_pass(share, again) for share in shares)

    def _decide_pass(self, share: str, again: str) -> int:
        """Decide for the sources in `share` (a condition on the URI): append to `todo`,
        `superseded` and `retried`; returns the number of distinct inputs in the share."""
        run = self.db.execute
        # One grouping of inputs and row keys together: per source, its first place in the input
        # (null: not an input), its latest file (its rank; null: no rows), the earliest rank (lower
        # than the latest: rows in several files, the earlier ones superseded), and whether any of
        # its rows asks to be tried again.
        run(
            "CREATE OR REPLACE TABLE sources AS SELECT source_uri, min(position) AS position, max(rank) AS top, "
            "min(rank) AS bottom, bool_or(again) AS again FROM ("
            "SELECT source_uri, position, NULL::BIGINT AS rank, false AS again "
            f"FROM inputs WHERE {share} UNION ALL SELECT source_uri, NULL, rank, {again} "
            f"FROM row_keys JOIN ranks USING (file) WHERE {share}) GROUP BY source_uri"
        )
        # Sources in several files (rare: a retry, a run killed while it tidied up): only the rows
        # of the latest file count. A video's rows all live in one file, and one error row of it
        # (a damaged clip) sends the whole video back.
        run("CREATE OR REPLACE TABLE multi AS SELECT source_uri, top FROM sources WHERE bottom < top")
        run(
            f"CREATE OR REPLACE TABLE contested AS SELECT file, source_uri, rank, top, {again} AS again "
            "FROM row_keys JOIN ranks USING (file) JOIN multi USING (source_uri)"
        )
        run(
            "CREATE OR REPLACE TABLE latest_again AS SELECT source_uri FROM contested WHERE rank = top "
            "GROUP BY source_uri HAVING bool_or(again)"
        )
        # to try again: the latest rows of a source ask for it
        again_latest = "((bottom = top AND again) OR (bottom < top AND source_uri IN (SELECT * FROM latest_again)))"
        run(
            "INSERT INTO todo SELECT source_uri, position FROM sources "
            f"WHERE position IS NOT NULL AND (top IS NULL OR {again_latest})"
        )
        run("INSERT INTO superseded SELECT DISTINCT file, source_uri FROM contested WHERE rank < top")
        # the sources whose error rows this run replaces, by the file holding their latest rows
        run(
            "INSERT INTO retried SELECT DISTINCT k.file, k.source_uri FROM row_keys k JOIN ranks r USING (file) "
            "JOIN (SELECT source_uri, top FROM sources "
            f"WHERE position IS NOT NULL AND again AND {again_latest}) s "
            "ON s.source_uri = k.source_uri AND s.top = r.rank"
        )
        return self.db.sql("SELECT count(position) FROM sources").fetchall()[0][0]

    def close(self) -> None:
        self.db.close()


def _by_file(rows: pa.Table) -> dict[int, pa.Array]:
    """(file, source_uri) rows grouped by file: file id -> its sources."""
    if not rows.num_rows:
        return {}
    rows = rows.sort_by("file")
    files = rows.column("file").to_numpy()
    uris = rows.column("source_uri").combine_chunks().cast(pa.string())
    starts = np.flatnonzero(np.diff(files, prepend=files[0] - 1))
    ends = [*starts[1:], len(files)]
    return {int(files[s]): uris.slice(int(s), int(e - s)) for s, e in zip(starts, ends, strict=True)}

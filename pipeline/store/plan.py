"""Planning a run into a labels folder: which inputs are left to label, given the inputs, what the
folder holds, its provenance and `--retry-errors`; and, once all of that is checked, tidying what
a killed run left behind. Nothing is labeled here."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa

from schemas.output import Provenance

from .join import AntiJoin, Decision
from .layout import INDEX_DIR, MANIFEST_NAME, PREVIEW_DIR, own_result_files
from .row_index import index_path
from .scan import OutputState, drop_superseded, scan_output
from .staging import STAGING_DIR

log = logging.getLogger(__name__)


class ProvenanceError(ValueError):
    """Labels made by another model, taxonomy or preprocessing than the command names."""


@dataclass
class StorePlan:
    """What a run will label, and the state of the folder it starts from."""

    run_id: str
    todo: pa.StringArray  # the inputs this run labels (images and videos)
    inputs: int  # distinct inputs
    files_before: list[str]  # the folder's own result files when the stream starts
    retried: dict[str, pa.Array] = field(default_factory=dict)  # file -> error rows this run re-attempts

    @property
    def retried_count(self) -> int:
        return sum(len(uris) for uris in self.retried.values())


class Planner:
    """Collects the inputs (a stream of URI batches), then decides against the folder. A context
    manager: its scratch folder (DuckDB's database and spill files) goes when it closes."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
        self.fs, self.root, self.url = fs, root, url
        self._scratch = tempfile.mkdtemp(prefix="san-plan-")
        self._join = AntiJoin(self._scratch)

    def __enter__(self) -> Planner:
        return self

    def __exit__(self, *exc: object) -> None:
        self._join.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def add_inputs(self, uris: pa.Array) -> None:
        self._join.add_inputs(uris)

    def plan(
        self, provenance: Provenance, run_id: str, retry_errors: str, sort_by_uri: bool, overwrite: bool = False
    ) -> StorePlan:
        """Raise ProvenanceError if the folder holds labels made differently; else tidy it (what a
        killed run left, the last manifest) and return what is left to label."""
        fs, root = self.fs, self.root
        if overwrite:
            clear_output(fs, root)
        state = scan_output(fs, root, self._join, self._scratch)
        check_provenance(state, provenance, self.url)
        _tidy(fs, root, state, run_id)  # only now, with everything checked, change the output
        decision = self._join.decide(state.file_rank(), retry_errors, sort_by_uri=sort_by_uri)
        retried = _drop_superseded_rows(fs, state, decision, run_id)
        again = f" ({decision.retried_count:,} of them error rows tried again)" if decision.retried_count else ""
        already = decision.inputs - len(decision.todo)
        log.info(f"{decision.inputs:,} inputs: {already:,} already labeled, {len(decision.todo):,} to label{again}")
        return StorePlan(run_id, decision.todo, decision.inputs, own_result_files(fs, root), retried)


def clear_output(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """Remove every result file of the job's own (nobody else's), the indexes, previews and manifest."""
    for path in own_result_files(fs, root):
        fs.rm(path)
    for name in (MANIFEST_NAME, PREVIEW_DIR, INDEX_DIR, STAGING_DIR):
        if fs.exists(f"{root}/{name}"):
            fs.rm(f"{root}/{name}", recursive=True)


def check_provenance(state: OutputState, current: Provenance, output: str) -> None:
    """Raise ProvenanceError if any earlier result was made with something that changes labels."""
    for path, recorded in state.provenances.items():
        if recorded is None:
            log.warning("%s records no provenance (an earlier release wrote it); its rows are kept", path)
            continue
        if recorded.schema_version != current.schema_version:
            raise ProvenanceError(
                f"{output} holds rows of output schema {recorded.schema_version} ({path}); this release writes "
                f"schema {current.schema_version}, and a plain reader of a folder holding both would see two "
                "shapes. Label into a new --output, or pass --overwrite to replace the earlier labels."
            )
        differences = current.differences(recorded)
        if differences:
            raise ProvenanceError(
                f"{output} holds labels made differently ({path}):\n  "
                + "\n  ".join(differences)
                + "\nmixing them would give one folder two meanings. Label into a new --output, or pass "
                "--overwrite to replace the earlier labels."
            )


def _tidy(fs: fsspec.AbstractFileSystem, root: str, state: OutputState, run_id: str) -> None:
    """Remove what a killed run left half-written and what indexes nothing, mark the output
    unfinished, and index the result files no index covered (so the next plan need not read them)."""
    for path in state.incomplete:
        log.warning("removing %s, left incomplete by an interrupted run", path)
        fs.rm(path)
    if fs.exists(f"{root}/{STAGING_DIR}"):  # files a run did not finish writing (the lease says it is over)
        fs.rm(f"{root}/{STAGING_DIR}", recursive=True)
    for path in state.damaged_indexes + state.stale_indexes:
        fs.rm(path)  # a row index cut short, or one whose files are all gone: it covers nothing
    if fs.exists(f"{root}/{MANIFEST_NAME}"):
        fs.rm(f"{root}/{MANIFEST_NAME}")  # this run is not finished until it writes one
    if state.unindexed is not None and state.unindexed.files:
        state.unindexed.write(fs, root, index_path(root, f"{run_id}-found"))


def _drop_superseded_rows(
    fs: fsspec.AbstractFileSystem, state: OutputState, decision: Decision, run_id: str
) -> dict[str, pa.Array]:
    """Rewrite the files whose rows a later row superseded (a run killed while it tidied up);
    returns the error rows this run re-attempts by the file that now holds them."""
    retried = {state.paths[number]: uris for number, uris in decision.retried.items()}
    if decision.superseded:
        superseded = {state.paths[number]: uris for number, uris in decision.superseded.items()}
        for path, copy in drop_superseded(fs, superseded, run_id).items():
            if path in retried:  # the error rows to replace moved with the rest of the file
                uris = retried.pop(path)
                if copy is not None:
                    retried[copy] = uris
    return retried

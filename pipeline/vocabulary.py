"""The vocabulary embedding table: one text embedding per class, built once and cached.

The table is keyed by a digest of (text-tower weights, templates, prompts) and cached as a
Parquet file on any fsspec URI; a cache hit never runs the text encoder. In a Ray job the driver
builds it once and puts it in the object store; every actor reads that one copy (numpy arrays
come back from the object store zero-copy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from schemas.taxonomy import Taxonomy

from .storage import read_parquet

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = os.environ.get("SAN_VOCAB_CACHE", str(Path.home() / ".cache" / "san-labeler" / "vocabularies"))
_META_DIGEST = b"san.vocabulary.digest"
_META_TEMPLATES = b"san.vocabulary.templates"


class TextEncoder(Protocol):
    """What the table needs from a model (san_core.model.SAN provides it)."""

    def text_tower_digest(self) -> str: ...

    def class_embeddings(self, names: list[list[str]], templates: list[str] | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class VocabularyTable:
    """Rows are the taxonomy's classes, then its distractors.

    class_ids[i] is the value written into label maps for row i (0 for distractors: scored, but
    written as unlabeled); embeddings [C, D] are L2-normalised float32.
    """

    class_ids: np.ndarray
    names: list[str]
    embeddings: np.ndarray
    background: bool
    digest: str

    @property
    def num_classes(self) -> int:
        return len(self.names)


def vocabulary_rows(taxonomy: Taxonomy) -> tuple[list[int], list[str], list[list[str]]]:
    """(label ids, names, prompt sets) of the taxonomy's classes followed by its distractors."""
    ids = [c.id for c in taxonomy.classes]
    names = [c.name for c in taxonomy.classes]
    prompts = [c.prompt_list for c in taxonomy.classes]
    for name in taxonomy.distractor_names():
        ids.append(0)
        names.append(name)
        prompts.append([name])
    return ids, names, prompts


def vocabulary_digest(text_tower_digest: str, templates: list[str], prompt_sets: list[list[str]]) -> str:
    payload = json.dumps([text_tower_digest, templates, prompt_sets], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def _cache_uri(cache_dir: str, taxonomy: Taxonomy, digest: str) -> str:
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in taxonomy.name)
    return f"{cache_dir.rstrip('/')}/{safe_name}-{digest[:16]}.parquet"


def _read_cached(uri: str, digest: str, storage_options: Mapping[str, Any] | None) -> np.ndarray | None:
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        table = read_parquet(f)
    stored = (table.schema.metadata or {}).get(_META_DIGEST, b"").decode()
    if stored != digest:
        log.warning("vocabulary cache %s has digest %s, expected %s: rebuilding", uri, stored[:16], digest[:16])
        return None
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)


def _write_cache(
    uri: str,
    digest: str,
    templates: list[str],
    names: list[str],
    prompt_sets: list[list[str]],
    embeddings: np.ndarray,
    storage_options: Mapping[str, Any] | None,
) -> None:
    dim = embeddings.shape[1]
    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    table = pa.table(
        {
            "name": pa.array(names, type=pa.string()),
            "prompts": pa.array(prompt_sets, type=pa.list_(pa.string())),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    ).replace_schema_metadata({_META_DIGEST: digest.encode(), _META_TEMPLATES: json.dumps(templates).encode()})
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)


def _embed_with_progress(
    model: TextEncoder, name: str, prompt_sets: list[list[str]], templates: list[str], report_every_s: float = 10.0
) -> np.ndarray:
    """The text encoder over the classes in tenths (each class is embedded on its own, so the
    parts concatenate to the whole), with a progress line at most every `report_every_s`."""
    started = last = time.monotonic()
    step = max(1, -(-len(prompt_sets) // 10))
    parts = []
    for start in range(0, len(prompt_sets), step):
        parts.append(model.class_embeddings(prompt_sets[start : start + step], templates).float().cpu().numpy())
        done, now = min(start + step, len(prompt_sets)), time.monotonic()
        if now - last >= report_every_s and done < len(prompt_sets):
            left = (now - started) / done * (len(prompt_sets) - done)
            log.info("vocabulary %r: %d/%d classes, about %.0fs left", name, done, len(prompt_sets), left)
            last = now
    log.info("vocabulary %r built in %.1fs", name, time.monotonic() - started)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def load_or_build_vocabulary(
    taxonomy: Taxonomy,
    model: TextEncoder,
    cache_dir: str | None = DEFAULT_CACHE_DIR,
    storage_options: Mapping[str, Any] | None = None,
) -> VocabularyTable:
    """The taxonomy's embedding table: from the cache when its digest matches, else built with
    the model's text encoder and written back. `cache_dir=None` disables the cache."""
    ids, names, prompt_sets = vocabulary_rows(taxonomy)
    templates = taxonomy.template_list()
    digest = vocabulary_digest(model.text_tower_digest(), templates, prompt_sets)
    uri = _cache_uri(cache_dir, taxonomy, digest) if cache_dir else None
    embeddings = _read_cached(uri, digest, storage_options) if uri else None
    if embeddings is not None and embeddings.shape[0] != len(names):
        embeddings = None
    if embeddings is None:
        log.info(
            "building vocabulary %r: %d classes x %d templates (once; cached as %s)",
            taxonomy.name,
            len(names),
            len(templates),
            uri or "nothing",
        )
        embeddings = _embed_with_progress(model, taxonomy.name, prompt_sets, templates)
        if uri:
            _write_cache(uri, digest, templates, names, prompt_sets, embeddings, storage_options)
    return VocabularyTable(
        class_ids=np.asarray(ids, dtype=np.int32),
        names=names,
        embeddings=np.ascontiguousarray(embeddings, dtype=np.float32),
        background=taxonomy.background == "learned",
        digest=digest,
    )

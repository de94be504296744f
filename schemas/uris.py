"""Locations as the jobs take them: a local path is made absolute when a config is built, since
Ray workers run in other directories; fsspec URIs (s3://, gs://, ...) are kept as given."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator


def absolute_uri(uri: str) -> str:
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


def absolute_vocab(vocab: str) -> str:
    """A taxonomy path made absolute, unless it names a shipped vocabulary (no file of that name)."""
    return absolute_uri(vocab) if "://" in vocab or Path(vocab).exists() or "/" in vocab else vocab


Uri = Annotated[str, AfterValidator(absolute_uri)]
VocabRef = Annotated[str, AfterValidator(absolute_vocab)]

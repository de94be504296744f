"""Checkpoints passed around by email: code is never run and the refusal says why; safetensors
and PyTorch problems are told apart; size and header are checked before a file is read whole."""

from __future__ import annotations

import io
import os
import pickle
import time
import zipfile
from pathlib import Path

import pytest
import torch

from san_core.checkpoint import MAX_CHECKPOINT_BYTES, CheckpointError, read_checkpoint


class RunsACommand:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_a_command_is_refused_and_named(tmp_path):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "model.pth"
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "payload": RunsACommand(marker)}, buffer)
    evil.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(str(evil))
    assert "contains code (posix.system); refusing to load it" in str(info.value)
    assert not marker.exists()

    legacy = tmp_path / "legacy.pth"  # a bare pickle (the pre-zip format) with the same payload
    legacy.write_bytes(pickle.dumps(RunsACommand(marker), protocol=2))
    with pytest.raises(CheckpointError, match=r"contains code \(posix.system\)|not a readable PyTorch checkpoint"):
        read_checkpoint(str(legacy))
    assert not marker.exists()


def test_safetensors_and_torch_problems_are_told_apart(tmp_path):
    huge_header = tmp_path / "huge_header.safetensors"
    huge_header.write_bytes((2**40).to_bytes(8, "little") + b'{"a": 1}')
    with pytest.raises(CheckpointError, match="not a valid safetensors file: its header claims"):
        read_checkpoint(str(huge_header))

    broken_json = tmp_path / "broken.safetensors"
    broken_json.write_bytes((12).to_bytes(8, "little") + b'{"a": [1, 2,')
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint(str(broken_json))

    no_header = tmp_path / "text.safetensors"
    no_header.write_text("hello, this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a valid safetensors file \\(no header"):
        read_checkpoint(str(no_header))

    corrupt_zip = tmp_path / "corrupt.pth"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", b"garbage")
    corrupt_zip.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(str(corrupt_zip))

    text = tmp_path / "notes.pth"
    text.write_text("these are my notes, not weights\n")
    with pytest.raises(CheckpointError, match="neither a PyTorch checkpoint .* nor a .safetensors file"):
        read_checkpoint(str(text))


def test_an_oversized_file_is_refused_before_it_is_read(tmp_path):
    sparse = tmp_path / "huge.pth"
    with sparse.open("wb") as f:
        f.truncate(MAX_CHECKPOINT_BYTES + 1)  # sparse: no disk used, nothing to read
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="over the .*-byte checkpoint limit"):
        read_checkpoint(str(sparse))
    assert time.monotonic() - started < 5.0  # milliseconds when idle; a busy CI machine may be slow

"""Read and write SAN weights.

Two formats are read, from a local path or any fsspec URI (s3://, gs://, ...):

* the published layout (`clip_visual_extractor.*`, `clip_rec_head.*`, `side_adapter_network.*`,
  `ov_classifier.*`), as a `.pth` state_dict (bare or wrapped under "model") or `.safetensors`;
* the project's own format: a `.safetensors` file in this package's layout whose header
  metadata carries the JSON model config.

Loading is strict: every model tensor must be supplied with its exact shape, and every checkpoint
tensor must land somewhere, except the training-only or derived tensors named in
`IGNORED_REFERENCE_KEYS`.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from schemas.model_config import SanModelConfig

# Published name prefix -> this package's module path. Longest prefixes first.
REFERENCE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("side_adapter_network.vit_model.", "side_adapter."),
    ("side_adapter_network.", "side_adapter."),
    ("clip_visual_extractor.", "clip_features."),
    ("clip_rec_head.", "recognition_head."),
    ("ov_classifier.", "text_classifier."),
)

# Tensors the published checkpoints carry that inference has no use for:
# the loss's class weights (training only) and CLIP's causal text mask (rebuilt from the config).
IGNORED_REFERENCE_KEYS: frozenset[str] = frozenset({"criterion.empty_weight", "ov_classifier.attn_mask"})

FORMAT_TAG = "san-labeler/1"
# Checked before a file is read whole: the published ViT-L/14 checkpoint is about 1.8 GB.
MAX_CHECKPOINT_BYTES = 16 * 2**30
MAX_SAFETENSORS_HEADER_BYTES = 100 * 2**20  # the limit the safetensors library itself applies
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_PROTOCOL = 0x80  # the legacy torch.save format starts with a pickle protocol opcode


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class LoadedCheckpoint:
    """Tensors in this package's layout, plus the model config if the file carried one."""

    state_dict: dict[str, torch.Tensor]
    config: SanModelConfig | None
    digest: str  # sha256 of the file's bytes
    source_layout: str  # "reference" or "project"


def is_reference_layout(keys: Any) -> bool:
    return any(k.startswith(prefix) for k in keys for prefix, _ in REFERENCE_PREFIXES)


def from_reference_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename published keys to this package's; drop the ignored ones; keep unknown keys as they
    are so that the strict check reports them."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key in IGNORED_REFERENCE_KEYS:
            continue
        new_key = key
        for prefix, replacement in REFERENCE_PREFIXES:
            if key.startswith(prefix):
                new_key = replacement + key[len(prefix) :]
                break
        converted[new_key] = tensor
    return converted


def check_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    only: set[str] | None = None,
) -> None:
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped tensor
    (against the tensors named in `only`, when given)."""
    expected = {k: v for k, v in model.state_dict().items() if only is None or k in only}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mis_shaped = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if not (missing or unexpected or mis_shaped):
        return
    lines = [f"{source} does not fit the model:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines.extend(f"    {item}" for item in items)
    raise CheckpointError("\n".join(lines))


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strictly copy tensors into the model (assigning when the model lives on the meta device)."""
    check_state_dict(model, state_dict, source)
    on_meta = any(p.is_meta for p in model.parameters())
    model.load_state_dict(dict(state_dict), strict=True, assign=on_meta)


def load_subset(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], names: set[str], source: str = "checkpoint"
) -> None:
    """Copy exactly the tensors in `names` (e.g. the trainable ones of a fine-tuning checkpoint)."""
    check_state_dict(model, state_dict, source, only=names)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in names:
                tensor.copy_(state_dict[name])


def _kind_from_header(head: bytes, size: int, uri: str) -> str:
    """ "safetensors" or "torch", from the first bytes; anything else is refused before the file
    is read whole."""
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if header_len > MAX_SAFETENSORS_HEADER_BYTES or header_len > size - 8:
            raise CheckpointError(
                f"{uri} is not a valid safetensors file: its header claims {header_len:,} bytes (the file has {size:,})"
            )
        return "safetensors"
    if head.startswith(_ZIP_MAGIC) or (head[:1] and head[0] == _PICKLE_PROTOCOL):
        return "torch"
    if uri.endswith(".safetensors"):
        raise CheckpointError(f"{uri} is not a valid safetensors file (no header: it starts with {head[:8]!r})")
    raise CheckpointError(
        f"{uri} is neither a PyTorch checkpoint (.pth: a torch.save zip archive) nor a .safetensors "
        f"file: it starts with {head[:8]!r}"
    )


def _read_checked(uri: str, storage_options: Mapping[str, Any] | None) -> tuple[bytes, str]:
    """The file's bytes and its kind, after its size and header were checked."""
    try:
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        size = fs.size(path)
        if size is not None and size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{uri} is {size:,} bytes, over the {MAX_CHECKPOINT_BYTES:,}-byte checkpoint limit")
        with fs.open(path, "rb") as f:
            head = f.read(16)
            kind = _kind_from_header(head, size if size is not None else len(head), uri)
            data = head + f.read()
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint not found: {uri}") from e
    return data, kind


_CODE_GLOBAL = re.compile(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", re.IGNORECASE)


def _torch_load(data: bytes, uri: str) -> Mapping[str, Any]:
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = _CODE_GLOBAL.search(str(e))
        if code is None:
            raise CheckpointError(
                f"{uri} is not a readable PyTorch checkpoint (corrupt or not a torch.save file): {e}".split("\n")[0]
            ) from e
        raise CheckpointError(
            f"{uri} contains code ({code.group(1)}); refusing to load it. Only plain tensor checkpoints "
            "are read (torch.load weights_only=True): re-save its state_dict with torch.save(state_dict) "
            "or as .safetensors on a machine you trust."
        ) from e
    except Exception as e:  # torch raises RuntimeError and others for corrupt archives
        raise CheckpointError(f"{uri} is not a readable PyTorch checkpoint: {e}") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{uri} holds no state_dict (a mapping of names to tensors)")
    return obj


def read_checkpoint(uri: str, storage_options: Mapping[str, Any] | None = None) -> LoadedCheckpoint:
    """Read a published `.pth`/`.safetensors` or a project `.safetensors` into this package's layout."""
    data, kind = _read_checked(uri, storage_options)
    digest = hashlib.sha256(data).hexdigest()
    config = None
    if kind == "safetensors":
        try:
            tensors = load_safetensors_bytes(data)
        except Exception as e:
            raise CheckpointError(f"{uri} is not a readable safetensors file: {e}") from e
        metadata = _safetensors_metadata(data)
        if "config" in metadata:
            try:
                config = SanModelConfig.model_validate(json.loads(metadata["config"]))
            except Exception as e:
                raise CheckpointError(f"{uri} carries an invalid model config: {e}") from e
    else:
        tensors = dict(_torch_load(data, uri))
    if is_reference_layout(tensors):
        return LoadedCheckpoint(from_reference_layout(tensors), config, digest, "reference")
    return LoadedCheckpoint(dict(tensors), config, digest, "project")


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return dict(header.get("__metadata__") or {})


def save_checkpoint(
    model: nn.Module,
    config: SanModelConfig,
    uri: str,
    storage_options: Mapping[str, Any] | None = None,
    only: set[str] | None = None,
) -> str:
    """Write the project format (safetensors + config in its metadata); return its sha256.

    `only`, when given, restricts the file to those tensor names (e.g. the trainable ones).
    """
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if only is None or k in only}
    data = save_safetensors_bytes(state, metadata={"format": FORMAT_TAG, "config": config.model_dump_json()})
    with fsspec.open(uri, "wb", **(storage_options or {})) as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()

"""Fetch the published SAN checkpoints from the Hugging Face hub, once, into a local cache."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from .presets import HUB_REPO, get_preset

HUB_ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co")


class WeightsUnavailableError(RuntimeError):
    """Published weights are neither cached nor downloadable here."""


def _hub_reachable(timeout_s: float = 5.0) -> bool:
    # huggingface_hub retries for ~25 s on a machine without network; one quick probe first
    # turns that into an immediate, clear error.
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(HUB_ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def offline_message(model_name: str) -> str:
    """Names the file to pre-stage and the flag that takes it (every job has --model and --checkpoint)."""
    filename = get_preset(model_name).filename
    url = f"{HUB_ENDPOINT}/{HUB_REPO}/resolve/main/{filename}"
    return (
        f"--model {model_name} needs the published checkpoint {filename}, which is not in the local "
        f"cache and cannot be downloaded here (no network). Download {url} on a machine with a "
        f"network, copy it to this one (or to object storage) and pass it with "
        f"--checkpoint /path/to/{filename} (any fsspec URI works, e.g. s3://bucket/{filename})."
    )


def fetch_published_checkpoint(model_name: str, cache_dir: str | None = None) -> str:
    """Local path of the preset's published checkpoint, downloading it on first use."""
    from huggingface_hub import hf_hub_download

    filename = get_preset(model_name).filename
    try:
        return hf_hub_download(HUB_REPO, filename, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # not cached yet
        pass
    if not _hub_reachable():
        raise WeightsUnavailableError(offline_message(model_name))
    try:
        return hf_hub_download(HUB_REPO, filename, cache_dir=cache_dir)
    except Exception as e:
        raise WeightsUnavailableError(f"{offline_message(model_name)}\n(download failed: {e})") from e

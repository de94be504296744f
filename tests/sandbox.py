"""The test session's sandbox: a temporary home, Ray temp dir and caches, and a check that nothing
was written to the real home or the working tree."""

from __future__ import annotations

import os
import subprocess
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

# Paths under the real home that the tools used here write to when left alone.
WATCHED_IN_HOME = (".ray", ".cache/san-labeler", ".cache/huggingface", ".cache/torch", ".config/ray")
# Ignored build and cache outputs that any Python run makes in the working tree.
IGNORED_IN_TREE = (".venv/", "__pycache__/", ".egg-info/", ".pytest_cache/", ".ruff_cache/")

Snapshot = dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class Sandbox:
    root: Path
    real_home: Path

    @classmethod
    def create(cls, root: Path) -> Sandbox:
        home = Path(os.environ.get("HOME") or Path.home())
        for name in ("home", "ray", "cache"):
            (root / name).mkdir(parents=True, exist_ok=True)
        return cls(root=root, real_home=home)

    @property
    def home(self) -> Path:
        return self.root / "home"

    def environment(self) -> dict[str, str]:
        cache = self.root / "cache"
        return {
            "HOME": str(self.home),
            "RAY_TMPDIR": str(self.root / "ray"),
            "RAY_USAGE_STATS_ENABLED": "0",
            "SAN_VOCAB_CACHE": str(cache / "vocabularies"),
            "HF_HOME": str(cache / "huggingface"),
            "XDG_CACHE_HOME": str(cache),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "TORCH_HOME": str(cache / "torch"),
            "MPLCONFIGDIR": str(cache / "matplotlib"),
        }

    def activate(self, environ: MutableMapping[str, str]) -> None:
        environ.update(self.environment())

    def snapshot_outside(self, repo: Path) -> Snapshot:
        """What the real home's watched folders and the working tree hold now."""
        home_files = []
        for watched in WATCHED_IN_HOME:
            folder = self.real_home / watched
            if folder.is_dir():
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        stat = path.stat()
                        home_files.append(f"{path} {stat.st_size} {stat.st_mtime_ns}")
            elif folder.exists():
                home_files.append(str(folder))
        return {"home": tuple(home_files), "tree": tuple(_tree_status(repo))}

    def changes_outside(self, repo: Path, before: Snapshot) -> list[str]:
        after = self.snapshot_outside(repo)
        changes = []
        for kind in ("home", "tree"):
            old, new = set(before[kind]), set(after[kind])
            changes += [f"{kind}: new or changed {entry}" for entry in sorted(new - old)]
            changes += [f"{kind}: removed or changed {entry}" for entry in sorted(old - new)]
        return changes


def _tree_status(repo: Path) -> list[str]:
    """`git status` of the working tree, ignored files included, less the usual build outputs."""
    if not (repo / ".git").exists():
        return []
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [line for line in status if not any(part in line for part in IGNORED_IN_TREE)]

"""The user's guide is right: in README.md, docs/*.md and benchmarks/README.md every Python block
runs as pasted (in a folder holding what it names: a labeling output `labels/`, a fine-tuned model
`runs/ft1/model/model.safetensors`, `videos/drive.mp4`), every shell command uses only flags that
its command's --help lists, every link between them leads to a file, and the README stays a
ten-minute read."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from image_fixtures import jpeg_bytes

from jobs.cli import build_parser

pytestmark = pytest.mark.usefixtures("ray_session")

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
GUIDE = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
SCRIPTS = {"label", "finetune", "evaluate", "export", "demo"}  # jobs/NAME.py is `san NAME`
README_BYTES = 20_000  # about ten minutes of reading; the depth goes to docs/


def blocks(language: str, pages: list[Path] = GUIDE) -> list[str]:
    return [body for page in pages for lang, body in BLOCK.findall(page.read_text()) if lang == language]


def shell_commands(pages: list[Path] = GUIDE) -> list[str]:
    commands = []
    for body in blocks("bash", pages):
        joined = re.sub(r"\\\n\s*", " ", body)
        commands += [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]
    return commands


@pytest.fixture(scope="module")
def workdir(ray_session, tmp_path_factory, tiny_weights, parity_dir) -> Path:
    """A folder with what the README's Python blocks read: `labels/`, `runs/ft1/model/` and
    `videos/drive.mp4`."""
    import skimage.data
    from video_fixtures import camera_frames, encode

    from jobs.label import main as label_main
    from san_core.build import load_model
    from san_core.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("readme")
    images = root / "photos"
    images.mkdir()
    for name in ("astronaut", "chelsea"):
        (images / f"{name}.jpg").write_bytes(jpeg_bytes(getattr(skimage.data, name)()))
    (images / "broken.jpg").write_bytes(b"not a photograph")
    labels = ["--output", str(root / "labels"), "--max-error-ratio", "0.5"]  # broken.jpg on purpose
    rc = label_main(["--vocab", "voc20", "--input", str(images), *labels, *tiny_weights])
    assert rc == 0
    tiny = parity_dir / "tiny_a"
    loaded = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json"))
    save_checkpoint(loaded.model, loaded.model.config, str(root / "runs" / "ft1" / "model" / "model.safetensors"))
    (root / "videos").mkdir()
    drive = camera_frames(skimage.data.coffee(), 20, (96, 128))
    (root / "videos" / "drive.mp4").write_bytes(encode(drive, "mp4", fps=10))
    return root


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_blocks_run_as_pasted(index, workdir):
    code = blocks("python")[index]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"README python block {index} failed:\n{code}\n{result.stderr[-3000:]}"


def test_the_guide_has_the_blocks_a_user_looks_for():
    python = "\n".join(blocks("python"))
    for reader in ("pyarrow.dataset", "pandas", "duckdb", "ray.data.read_parquet", "coco_mask.decode", "load_model"):
        assert reader in python, reader
    commands = shell_commands()
    assert not [c for c in commands if c.startswith("python ")], "commands call `san`, or jobs/ through ray job submit"
    assert "--image-root" in README


def test_the_readme_is_a_ten_minute_read_with_the_commands_a_user_needs():
    assert len(README.encode()) < README_BYTES, f"README.md is {len(README.encode()):,} bytes: move depth to docs/"
    headings = ("Quick start", "Labeling", "Nightly runs", "Reading the results", "Review and correct", "Fine-tuning")
    for heading in (f"## {h}" for h in headings):
        assert f"\n{heading}\n" in README, heading
    readme_commands = " ".join(shell_commands([REPO / "README.md"]))
    for command in ("make demo", "make test", "san label", "ray job submit", "s3://", "crontab", "san export",
                    "san finetune", "san report"):  # fmt: skip
        assert command in readme_commands or command in README, command
    assert any("pyarrow.dataset" in block for block in blocks("python", [REPO / "README.md"]))  # reading the output


@pytest.mark.parametrize("page", GUIDE, ids=lambda page: str(page.relative_to(REPO)))
def test_every_link_between_pages_leads_to_a_file(page):
    targets = [t for t in LINK.findall(page.read_text()) if not t.startswith(("http://", "https://"))]
    assert page.name != "README.md" or page.parent != REPO or targets  # the README links into docs/
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to missing files: {missing}"


def _help_for(tokens: list[str]) -> tuple[str, str]:
    """(the --help text of the command these tokens run, its name), or ('', '') for other tools."""
    if tokens[0] in ("san", ".venv/bin/san"):
        path = tokens[1:]
    elif "jobs/" in " ".join(tokens):
        script = next(t for t in tokens if t.startswith("jobs/"))
        path = [Path(script).stem, *tokens[tokens.index(script) + 1 :]]
    else:
        return "", ""
    parser = build_parser()
    name = "san"
    for word in path:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or word not in subparsers[0].choices:
            break
        parser, name = subparsers[0].choices[word], f"{name} {word}"
    return parser.format_help(), name


@pytest.mark.parametrize("command", shell_commands())
def test_shell_commands_use_flags_their_help_lists(command):
    tokens = shlex.split(command, comments=True)
    if len(tokens) > 5 and all(re.fullmatch(r"[\d*/,-]+", t) for t in tokens[:5]):  # crontab: schedule, command
        tokens = tokens[5:]
    if "&&" in tokens:  # cd DIR && the command
        tokens = tokens[tokens.index("&&") + 1 :]
    if tokens[0] == ".venv/bin/san":
        tokens[0] = "san"
    if "--" in tokens and "jobs/" in command:  # ray job submit ... -- python jobs/NAME.py ...
        tokens = tokens[tokens.index("--") + 1 :]
    if tokens[0] == "export":  # environment for the commands after it
        assert all(re.fullmatch(r"[A-Z_]+=\S*", t) for t in tokens[1:]), command
        return
    if tokens[0] == "source":
        assert tokens[1] == ".venv/bin/activate", command  # the environment make creates
        return
    if tokens[0] == "make":
        assert re.search(rf"^{tokens[1]}:", (REPO / "Makefile").read_text(), re.MULTILINE), command
        return
    if tokens[0].endswith("python") and tokens[1].startswith("benchmarks/"):
        assert (REPO / tokens[1]).is_file(), command
        return
    if tokens[0] == "python":
        script = Path(tokens[1]).stem
        assert tokens[1].startswith("jobs/") and script in SCRIPTS | {"cli"}, command
    help_text, name = _help_for(tokens)
    if not help_text:
        assert tokens[0] in ("ray",), f"unknown command in README: {command}"
        return
    assert name.count(" ") >= 1, f"{command}: no such san subcommand"
    for token in tokens:
        flag = token.split("=", 1)[0]
        if re.fullmatch(r"--[a-z][a-z0-9-]*|-[a-z]", flag):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), f"`{name}` has no {flag}: {command}"

"""Build the packages a rented GPU machine lacks into one archive that travels with the checkout.

    python benchmarks/device/make_kit.py [--python 3.12] [--out .device-kit] [--baseline COMMIT]

The GPU machines this project is lent (benchmarks/device/README.md) hold PyTorch, Triton, NumPy,
pyarrow, Pillow, scikit-image and most of the scientific stack, but not Ray, pydantic, DuckDB,
open_clip and a few more that the labeling job imports, and nothing can be downloaded there. This
downloads those at the versions requirements/runtime.txt pins (wheels for the machine's Python),
unpacks them into one folder, leaves out what the job never loads (Ray's Java jars, RLlib, Serve
and the dashboard's web client: about 110 MB of Ray's 200) and writes OUT/site.tar.xz, which
`benchmarks/device/gpu_stream.sh` unpacks there. A checkout travels in at most 64 MiB with it.
With --baseline, COMMIT's code (its files less tests/ and docs/) goes to OUT/baseline, for the
benchmark's same-run comparison.
"""

from __future__ import annotations

import argparse
import io
import lzma
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
# What `pipeline.labeling.job` and the labeling actors import that the machines' image lacks
# (compared with the image's package list of 2026-11-17).
MISSING_ON_THE_IMAGE = (
    "annotated-types",
    "duckdb",
    "ftfy",
    "isal",
    "jsonschema",
    "jsonschema-specifications",
    "open-clip-torch",
    "pycocotools",
    "pydantic",
    "pydantic-core",
    "ray",
    "referencing",
    "rpds-py",
    "typing-inspection",
    "wcwidth",
)
# Parts of Ray's wheel the labeling job never loads.
RAY_UNUSED = ("ray/jars", "ray/rllib", "ray/serve", "ray/dashboard/client", "ray/tune/examples")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LIMIT_MIB = 46  # the 64 MiB a call carries, less the checkout's own files


def _is_elf(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) == b"\x7fELF"


def pinned(python: str) -> list[str]:
    """`name==version` of each package in MISSING_ON_THE_IMAGE, as the lock pins it for `python`."""
    environment = {
        "python_full_version": f"{python}.0",
        "python_version": python,
        "sys_platform": "linux",
        "platform_machine": "x86_64",
    }
    found = {}
    for line in (ROOT / "requirements" / "runtime.txt").read_text().splitlines():
        if not line or line.startswith(("#", " ")):
            continue
        requirement = Requirement(line)
        if requirement.name in MISSING_ON_THE_IMAGE and (
            requirement.marker is None or requirement.marker.evaluate(environment)
        ):
            found[requirement.name] = f"{requirement.name}{requirement.specifier}"
    missing = sorted(set(MISSING_ON_THE_IMAGE) - set(found))
    if missing:
        raise SystemExit(f"requirements/runtime.txt pins no version of {missing} for Python {python}")
    return sorted(found.values())


def export_baseline(commit: str, folder: Path) -> None:
    """COMMIT's files but tests/ and docs/ (the parity fixtures alone are 13 MB) into `folder`."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "--", ".", ":!tests", ":!docs"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(archive)) as files:
        files.extractall(folder, filter="data")
    print(f"{folder}: the code of {commit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="3.12", help="the machine's Python (3.12 on the lent image)")
    parser.add_argument("--out", default=str(ROOT / ".device-kit"))
    parser.add_argument("--baseline", help="a commit whose code the benchmark also runs (OUT/baseline)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.baseline:
        export_baseline(args.baseline, out / "baseline")
    pins = pinned(args.python)
    with tempfile.TemporaryDirectory(prefix="device-kit-") as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--python-version", args.python, "--implementation", "cp", *platforms, "-d", str(wheels),
             *pins],
            check=True,
        )  # fmt: skip
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)  # a wheel's files are laid out as installed
        for path in site.glob("*.data"):  # no package here installs scripts or headers the job needs
            shutil.rmtree(path)
        for unused in RAY_UNUSED:
            shutil.rmtree(site / unused, ignore_errors=True)
        binaries = [path for path in site.rglob("*") if path.is_file() and _is_elf(path)]
        for binary in binaries:
            binary.chmod(0o755)  # zip extraction drops the executable bit
        # Ray's and DuckDB's binaries ship with their symbol tables (some 45 MB): the kit has no
        # room for them and a benchmark no use.
        subprocess.run(["strip", "--strip-unneeded", *map(str, binaries)], check=True)
        archive_path = out / "site.tar.xz"
        with tarfile.open(archive_path, "w:xz", preset=9 | lzma.PRESET_EXTREME) as archive:
            archive.add(site, arcname="site")
    size = archive_path.stat().st_size / 2**20
    print(f"{archive_path}: {size:.1f} MiB for Python {args.python}: {', '.join(pins)}")
    if size > LIMIT_MIB:
        raise SystemExit(f"{archive_path} is {size:.1f} MiB, over the {LIMIT_MIB} MiB a call carries beside it")


if __name__ == "__main__":
    main()

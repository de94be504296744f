"""One command, one vocabulary of flags: `san` and its subcommands, flags derived from the job
schemas (defaults written once), and the previous release's spellings still accepted."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.cli import build_parser
from schemas.cli import build_config
from schemas.jobs import EvaluateRunConfig, EvaluateScoreConfig, ExportConfig, FinetuneConfig, LabelJobConfig

REPO = Path(__file__).resolve().parents[1]
SAN = Path(sys.executable).parent / "san"
SUBCOMMANDS = ("label", "finetune", "evaluate", "export", "demo", "verify", "taxonomy")


def _subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}


def test_san_help_lists_every_subcommand():
    result = subprocess.run([str(SAN), "--help"], capture_output=True, text=True, check=True)
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in result.stdout, name
    taxonomy = subprocess.run([str(SAN), "taxonomy", "check", "voc20"], capture_output=True, text=True, check=False)
    assert taxonomy.returncode == 0 and "20 classes" in taxonomy.stdout


def test_previous_commands_still_work_with_a_warning():
    result = subprocess.run([str(SAN.parent / "san-label"), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "usage: san label" in result.stdout
    assert "san-label is deprecated" in result.stderr and "use `san label`" in result.stderr


def test_plain_scripts_keep_working_for_ray_job_submit():
    for script in ("label", "finetune", "evaluate", "export", "demo", "cli"):
        result = subprocess.run(
            [sys.executable, str(REPO / "jobs" / f"{script}.py"), "--help"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0 and "usage:" in result.stdout, script


@pytest.mark.parametrize(
    ("path", "common"),
    [
        (("label",), {"--input", "--output", "--vocab", "--model", "--checkpoint", "--model-config"}),
        (("finetune",), {"--train", "--output", "--vocab", "--model", "--checkpoint", "--model-config"}),
        (("evaluate", "run"), {"--input", "--output", "--model", "--checkpoint", "--model-config"}),
        (("evaluate", "score"), {"--input", "--output", "--vocab"}),
        (("export",), {"--input", "--output", "--vocab"}),
    ],
)
def test_one_vocabulary_of_flags(path, common):
    flags = _flags(_subparser(*path))
    assert common | {"--storage-options", "--log-level", "-v", "-q"} <= flags
    assert not flags & {"--storage", "--to", "--report", "--root", "--labels-folder", "--init", "--init-config"}


@pytest.mark.parametrize(
    ("path", "schema", "required"),
    [
        (("label",), LabelJobConfig, ["--vocab", "v", "--input", "s3://i/", "--output", "s3://o/"]),
        (("finetune",), FinetuneConfig, ["--vocab", "v", "--train", "s3://t", "--output", "s3://o", "--epochs", "1"]),
        (("evaluate", "run"), EvaluateRunConfig, ["--dataset", "voc20", "--input", "s3://d", "--output", "s3://r"]),
        (("evaluate", "score"), EvaluateScoreConfig, ["--input", "s3://l", "--ground-truth", "s3://g", "--vocab", "v",
                                                      "--output", "s3://r"]),
        (("export",), ExportConfig, ["--input", "s3://l", "--output", "s3://x.json", "--vocab", "v"]),
    ],
)  # fmt: skip
def test_flags_defaults_and_help_come_from_the_schema(path, schema, required):
    parser = _subparser(*path)
    config = build_config(parser.parse_args(required), schema)
    given = {flag.lstrip("-").replace("-", "_") for flag in required if flag.startswith("--")}
    for name, field in schema.model_fields.items():
        if not field.is_required() and name not in given and name not in ("weights", "init"):
            assert getattr(config, name) == field.get_default(call_default_factory=True), name  # the schema's
    help_text = " ".join(parser.format_help().split())
    for name, field in schema.model_fields.items():
        if field.description and name not in ("weights", "init"):
            assert " ".join(field.description.split())[:40] in help_text, name
    assert all(a.default in (argparse.SUPPRESS, None, False) for a in parser._actions if a.dest != "help")


def test_a_missing_or_invalid_flag_is_named(tmp_path, capsys):
    from jobs.finetune import main as finetune_main

    assert finetune_main(["--vocab", "voc20", "--train", str(tmp_path / "t.csv"), "--max-steps", "1"]) == 2
    assert "--output: required" in capsys.readouterr().err
    rc = finetune_main(["--vocab", "voc20", "--train", "t.csv", "--output", "o", "--max-steps", "0"])
    assert rc == 2 and "--max-steps: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_label_flags_reach_the_config():
    parser = _subparser("label")
    args = parser.parse_args(
        ["--vocab", "ade150", "--input", "s3://in/", "--output", "s3://out/", "--checkpoint", "s3://w/m.pth",
         "--model-config", "s3://w/c.json", "--concurrency", "2,8", "--gpus-per-actor", "0.5", "--overwrite",
         "--storage-options", '{"anon": false}', "--preview", "3"]
    )  # fmt: skip
    config = build_config(args, LabelJobConfig)
    assert config.weights.checkpoint == "s3://w/m.pth" and config.weights.model is None
    assert config.weights.model_config_uri == "s3://w/c.json"
    assert config.concurrency == (2, 8) and config.gpus_per_actor == 0.5 and config.overwrite
    assert config.storage_options == {"anon": False} and config.preview == 3
    assert build_config(parser.parse_args(["--vocab", "v", "--input", "i", "--output", "o"]), LabelJobConfig).input == (
        str(Path("i").resolve())  # local paths are made absolute for Ray's workers
    )


@pytest.mark.parametrize(
    ("path", "schema", "old", "field", "expected"),
    [
        (("finetune",), FinetuneConfig, ["--storage", "s3://run"], "output", "s3://run"),
        (("finetune",), FinetuneConfig, ["--init", "s3://w/m.pth"], "init", {"checkpoint": "s3://w/m.pth"}),
        (("finetune",), FinetuneConfig, ["--init", "san-vit-l14-336"], "init", {"model": "san-vit-l14-336"}),
        (("export",), ExportConfig, ["--to", "s3://x.json"], "output", "s3://x.json"),
        (("evaluate", "score"), EvaluateScoreConfig, ["--labels", "s3://l", "--report", "s3://r"], "input", "s3://l"),
        (("evaluate", "run"), EvaluateRunConfig, ["--root", "s3://e", "--output", "s3://r"], "input", "s3://e"),
        (("evaluate", "run"), EvaluateRunConfig, ["--report", "s3://r"], "output", "s3://r"),
    ],
)
def test_old_spellings_work_for_one_release_with_a_warning(path, schema, old, field, expected, capsys):
    base = {
        FinetuneConfig: ["--vocab", "v", "--train", "s3://t.csv", "--output", "s3://o", "--max-steps", "1"],
        ExportConfig: ["--input", "s3://l", "--vocab", "v", "--output", "s3://o"],
        EvaluateScoreConfig: ["--ground-truth", "s3://g", "--vocab", "v"],
        EvaluateRunConfig: ["--dataset", "voc20", "--input", "s3://d"],
    }[schema]
    args = _subparser(*path).parse_args([*base, *old])
    value = getattr(build_config(args, schema), field)
    if isinstance(expected, dict):
        assert all(getattr(value, k) == v for k, v in expected.items())
    else:
        assert value == expected
    err = capsys.readouterr().err
    assert f"warning: {old[0]} is deprecated" in err and "use --" in err

"""Command-line flags derived from the job schemas: each field of a job config is one flag, with its
type, default and help taken from the field, so that flags and defaults are written once.

A field's `json_schema_extra={"cli": {...}}` may set `flag` (another spelling than the field
name), `short`, `metavar`, `parse` (a function name in PARSERS) and `deprecated` (old spellings
that still work for one release, with a warning). A nested config (`ModelChoice`) contributes its
own fields as flags.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .taxonomy import Taxonomy, TaxonomyError, load_taxonomy

ConfigT = TypeVar("ConfigT", bound=BaseModel)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parse_min_max(text: str) -> tuple[int, int]:
    """`N` or `MIN,MAX`."""
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use MIN or MIN,MAX (integers)") from None
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"{text!r}: use MIN or MIN,MAX")
    return (parts[0], parts[-1])


def parse_json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"anon\": false}'")
    return value


PARSERS: dict[str, Callable[[str], Any]] = {"min_max": parse_min_max, "json_object": parse_json_object}


def _cli(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return dict(extra.get("cli", {})) if isinstance(extra, dict) else {}


def flag_name(name: str, field: FieldInfo) -> str:
    return _cli(field).get("flag") or "--" + name.replace("_", "-")


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _nested_model(field: FieldInfo) -> type[BaseModel] | None:
    annotation = _strip_optional(field.annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


class DeprecatedFlag(argparse.Action):
    """An old spelling: stores into the new flag's dest and warns once."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, store_true: bool = False, **kwargs):
        self.new, self.store_true = new, store_true
        super().__init__(option_strings, dest, nargs=0 if store_true else None, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        print(
            f"warning: {option_string} is deprecated and will be removed in the next release; use {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, True if self.store_true else values)


def _help(field: FieldInfo, default: Any) -> str:
    text = field.description or ""
    if default is not None and default is not PydanticUndefined and default is not False and default != {}:
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text += f" (default: {shown})"
    return text.strip() or " "


def add_config_flags(parser: argparse.ArgumentParser, config: type[BaseModel], skip: Sequence[str] = ()) -> None:
    """One flag per field of `config` (and of its nested configs); defaults stay in the schema."""
    for name, field in config.model_fields.items():
        if name in skip:
            continue
        nested = _nested_model(field)
        if nested is not None:
            add_config_flags(parser, nested)
            continue
        cli = _cli(field)
        flag = flag_name(name, field)
        annotation = _strip_optional(field.annotation)
        default = field.get_default(call_default_factory=True)
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(field, default)}
        if field.is_required() and not cli.get("deprecated"):
            options["required"] = True  # (with old spellings too, the schema reports it missing)
        if annotation is bool:
            options["action"] = "store_true"
        else:
            if "parse" in cli:
                options["type"] = PARSERS[cli["parse"]]
            elif typing.get_origin(annotation) is dict:
                options["type"] = parse_json_object
            elif typing.get_origin(annotation) is Literal:
                options["choices"] = list(typing.get_args(annotation))
            elif annotation in (int, float):
                options["type"] = annotation
                options["metavar"] = "N" if annotation is int else "X"
            if "metavar" in cli:
                options["metavar"] = cli["metavar"]
        names = [flag] + ([cli["short"]] if "short" in cli else [])
        parser.add_argument(*names, **options)
        for old in cli.get("deprecated", ()):
            parser.add_argument(
                old,
                action=DeprecatedFlag,
                dest=name,
                new=flag,
                store_true=annotation is bool,
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )


def config_values(args: argparse.Namespace, config: type[BaseModel]) -> dict[str, Any]:
    """The fields given on the command line, nested configs built from their own flags; fields not
    given are left out, so the schema's defaults apply."""
    given = vars(args)
    values: dict[str, Any] = {}
    for name, field in config.model_fields.items():
        nested = _nested_model(field)
        if nested is not None:
            values[name] = config_values(args, nested)
        elif name in given:
            values[name] = given[name]
    return values


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--log-level", choices=LOG_LEVELS, default=None, help="default: INFO")
    group.add_argument("-v", "--verbose", action="store_true", help="more detail (--log-level DEBUG)")
    group.add_argument("-q", "--quiet", action="store_true", help="warnings, errors and the summary only")


def add_local_ray_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of the jobs that start a local Ray when they find none (see `pipeline.ray_session.init_ray`)."""
    group = parser.add_argument_group("local Ray")
    group.add_argument(
        "--ray-dashboard",
        action="store_true",
        help="start Ray's dashboard (http://127.0.0.1:8265) with the local Ray this job starts; "
        "a cluster's head runs its own",
    )


def log_level(args: argparse.Namespace) -> str:
    if getattr(args, "log_level", None):
        return args.log_level
    if getattr(args, "verbose", False):
        return "DEBUG"
    if getattr(args, "quiet", False):
        return "WARNING"
    return "INFO"


def build_config(args: argparse.Namespace, config: type[ConfigT]) -> ConfigT:
    return config.model_validate(config_values(args, config))


def _flag_of(config: type[BaseModel], loc: tuple) -> str | None:
    """The flag a validation error's location names (a nested config's field has its own flag)."""
    model: type[BaseModel] | None = config
    flag = None
    for part in loc:
        if model is None or part not in model.model_fields:
            break
        field = model.model_fields[part]
        flag, model = flag_name(str(part), field), _nested_model(field)
    return flag if model is None else None


def explain(error: ValidationError, config: type[BaseModel]) -> str:
    """One line per problem, named by flag: `--output: required`."""
    lines = []
    for item in error.errors():
        flag = _flag_of(config, tuple(item["loc"]))
        message = "required" if item["type"] == "missing" else item["msg"].removeprefix("Value error, ")
        lines.append(f"{flag}: {message}" if flag else message)
    return "\n".join(lines)


def config_and_taxonomy(args: argparse.Namespace, config: type[ConfigT]) -> tuple[ConfigT, Taxonomy] | None:
    """A job's config from its flags, and its taxonomy (`config.vocab`) loaded. On a problem, print
    it and return None: the job then exits 2, before Ray starts."""
    try:
        built = build_config(args, config)
        return built, load_taxonomy(built.vocab, built.storage_options)  # type: ignore[attr-defined]
    except ValidationError as e:
        print(f"invalid arguments:\n{explain(e, config)}", file=sys.stderr)
    except TaxonomyError as e:
        print(f"invalid taxonomy:\n{e}", file=sys.stderr)
    return None

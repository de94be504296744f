"""taxonomy.yaml: the classes a user wants labeled, validated before any work starts.

    name: street-scenes
    version: 3
    templates: vild              # a named prompt set, or a list of strings each containing {}
    background: learned          # the model's learned background embedding, or none
    distractors: none            # or coco-all / coco-stuff: scored, but written as unlabeled
    classes:
      - id: 1                    # the value written into label maps; 0 means unlabeled
        name: road
        prompts: [road, street]  # synonyms; default [name]
        color: "#804080"         # optional; a stable palette colour otherwise

`load_taxonomy` reads a file from any fsspec URI, or a shipped benchmark vocabulary by name
(`ade150`, `ade847`, `coco-stuff-171`, `pc59`, `pc459`, `voc20`). Errors name the file, the
field path and the line. `python -m schemas.taxonomy FILE` checks a file and exits 2 if invalid.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import re
import sys
from collections.abc import Mapping
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .templates import TEMPLATE_SETS

BUILTIN_VOCABULARIES: dict[str, str] = {
    "ade150": "ade150.yaml",
    "ade847": "ade847.yaml",
    "coco-stuff-171": "coco-stuff-171.yaml",
    "pc59": "pc59.yaml",
    "pc459": "pc459.yaml",
    "voc20": "voc20.yaml",
}
MAX_CLASS_ID = 65535  # label maps are 16-bit PNGs
# Limits checked before (or while) parsing, each in time linear in the file's size: taxonomies come
# from other people, and a few hostile lines of YAML must not hang or exhaust a job.
MAX_TAXONOMY_BYTES = 16 * 2**20
MAX_CLASSES = 50_000
MAX_PROMPTS_PER_CLASS = 64
MAX_TEMPLATES = 256
MAX_TEXT_CHARS = 1_000  # a class name, prompt or template
MAX_NESTING = 8  # top level > classes > a class > its prompts is 4
MAX_KEYS_PER_MAPPING = 64  # a taxonomy's mappings have 6 known keys at most: more is not a typo
MAX_ERRORS_SHOWN = 20
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the same, ~20x faster
_HEX_COLOUR = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


class TaxonomyClass(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int = Field(ge=1, le=MAX_CLASS_ID, description="label-map value; 0 is reserved for unlabeled")
    name: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    prompts: list[str] | None = Field(
        default=None, max_length=MAX_PROMPTS_PER_CLASS, description="synonyms embedded for this class; default [name]"
    )
    color: str | None = None

    @field_validator("name")
    @classmethod
    def _strip_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("class name is blank")
        return value.strip()

    @field_validator("prompts")
    @classmethod
    def _check_prompts(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("prompts is empty; leave it out to use the class name")
        if any(not p.strip() for p in value):
            raise ValueError("prompts contains a blank entry")
        return [p.strip() for p in value]

    @field_validator("color")
    @classmethod
    def _check_color(cls, value: str | None) -> str | None:
        if value is not None and not _HEX_COLOUR.match(value):
            raise ValueError(f"colour {value!r} is not of the form '#rrggbb'")
        return value

    @property
    def prompt_list(self) -> list[str]:
        return list(self.prompts) if self.prompts else [self.name]

    def rgb(self) -> tuple[int, int, int]:
        """The class colour: its own, or a stable palette colour derived from its id."""
        if self.color:
            hex_digits = self.color[1:]
            if len(hex_digits) == 3:
                hex_digits = "".join(c * 2 for c in hex_digits)
            return tuple(int(hex_digits[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
        # golden-ratio hue steps keep neighbouring ids apart; fixed saturation/value stay legible
        hue = (self.id * 0.6180339887) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
        return round(r * 255), round(g * 255), round(b * 255)


class Taxonomy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    version: int | str = 1
    templates: str | list[str] = "vild"
    background: Literal["learned", "none"] = "learned"
    distractors: Literal["none", "coco-all", "coco-stuff"] = "none"
    classes: list[TaxonomyClass] = Field(min_length=1)

    @field_validator("templates")
    @classmethod
    def _check_templates(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            if value not in TEMPLATE_SETS:
                raise ValueError(f"unknown template set {value!r}; known: {', '.join(TEMPLATE_SETS)}")
            return value
        if not value:
            raise ValueError("templates is an empty list")
        if len(value) > MAX_TEMPLATES:
            raise ValueError(f"{len(value)} templates; at most {MAX_TEMPLATES}")
        for template in value:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain exactly one '{{}}' for the class name")
        return value

    @model_validator(mode="after")
    def _check_unique(self) -> Taxonomy:
        seen_ids: dict[int, int] = {}
        seen_names: dict[str, int] = {}
        for index, cls in enumerate(self.classes):
            if cls.id in seen_ids:
                raise ValueError(f"classes[{index}]: id {cls.id} is already used by classes[{seen_ids[cls.id]}]")
            if cls.name in seen_names:
                raise ValueError(
                    f"classes[{index}]: name {cls.name!r} is already used by classes[{seen_names[cls.name]}]"
                )
            seen_ids[cls.id] = index
            seen_names[cls.name] = index
        return self

    def template_list(self) -> list[str]:
        return list(TEMPLATE_SETS[self.templates]) if isinstance(self.templates, str) else list(self.templates)

    def distractor_names(self) -> list[str]:
        """Extra class names scored with the vocabulary but written as unlabeled (the reference
        demo's vocabulary augmentation with COCO-Stuff names), minus those the taxonomy has."""
        if self.distractors == "none":
            return []
        coco = load_taxonomy("coco-stuff-171")
        names = [c.name for c in coco.classes]
        if self.distractors == "coco-stuff":
            names = names[80:]  # the 91 stuff classes follow the 80 thing classes
        taken = {c.name for c in self.classes} | {p for c in self.classes for p in c.prompt_list}
        return [n for n in names if n not in taken]

    def digest(self) -> str:
        """sha256 of the canonical JSON form: equal taxonomies have equal digests."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class TaxonomyError(ValueError):
    """An invalid taxonomy file; the message names the file, field path and line."""


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc`, or of its deepest existing parent."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if key.value == part:
                    child = value if not isinstance(value, yaml.ScalarNode) or value.value != "" else key
                    line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def _duplicate_keys(node: yaml.Node | None, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], int]]:
    """YAML silently keeps the last of duplicated keys; a typo-proof format must not."""
    found: list[tuple[tuple[Any, ...], int]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                found.append(((*path, key.value), key.start_mark.line + 1))
            seen.add(key.value)
            found.extend(_duplicate_keys(value, (*path, key.value)))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found.extend(_duplicate_keys(item, (*path, index)))
    return found


def _check_structure(text: str, source: str) -> None:
    """One pass over the YAML events, before anything is built: no anchors or aliases (an alias
    bomb expands a few lines into billions of nodes), bounded nesting, at most MAX_CLASSES
    entries in a top-level list, at most MAX_KEYS_PER_MAPPING keys in a mapping (a million
    unknown keys would otherwise be composed, validated and reported one by one)."""
    depth = entries = 0
    open_mappings: list[list[int]] = []  # per open collection: [is a mapping, nodes in it so far]
    for event in yaml.parse(text, Loader=_LOADER):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise TaxonomyError(f"{source} (line {line}): YAML anchors and aliases (&name, *name) are not allowed")
        if isinstance(event, yaml.NodeEvent) and open_mappings:
            parent = open_mappings[-1]
            parent[1] += 1
            if parent[0] and parent[1] > 2 * MAX_KEYS_PER_MAPPING:  # a key and a value per entry
                raise TaxonomyError(
                    f"{source} (line {line}): a mapping with more than {MAX_KEYS_PER_MAPPING} keys "
                    "(a taxonomy's have 6 at most)"
                )
        if isinstance(event, yaml.CollectionStartEvent):
            open_mappings.append([isinstance(event, yaml.MappingStartEvent), 0])
            depth += 1
            entries += depth == 3  # a class: a mapping in the top-level `classes` list
            if entries > MAX_CLASSES:
                raise TaxonomyError(f"{source}: more than {MAX_CLASSES:,} classes, the limit for a taxonomy")
            if depth > MAX_NESTING:
                raise TaxonomyError(f"{source} (line {line}): nested deeper than {MAX_NESTING} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            open_mappings.pop()
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_TEXT_CHARS * 4:
            raise TaxonomyError(f"{source} (line {line}): a value of {len(event.value):,} characters")


def _limited(lines: list[str]) -> str:
    """The first MAX_ERRORS_SHOWN problems and a count of the rest."""
    shown = lines[:MAX_ERRORS_SHOWN]
    if len(lines) > MAX_ERRORS_SHOWN:
        shown.append(f"... and {len(lines) - MAX_ERRORS_SHOWN:,} more problems")
    return "\n".join(shown)


def parse_taxonomy(text: str, source: str) -> Taxonomy:
    """Validate taxonomy YAML text; `source` names the file in error messages."""
    if len(text) > MAX_TAXONOMY_BYTES:
        raise TaxonomyError(f"{source}: {len(text):,} characters; a taxonomy may have at most {MAX_TAXONOMY_BYTES:,}")
    try:
        _check_structure(text, source)
        loader = _LOADER(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise TaxonomyError(f"{source}{where}: not valid YAML: {getattr(e, 'problem', e)}") from e
    if not isinstance(data, Mapping):
        raise TaxonomyError(f"{source}: expected a mapping with name, classes, ... at the top level")
    problems = [f"{source}: {_field_path(p)} (line {line}): duplicate key" for p, line in _duplicate_keys(root)]
    if problems:
        raise TaxonomyError(_limited(problems))
    try:
        return Taxonomy.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        lines = []
        # only the shown problems get a line number: each is a walk down the YAML tree, and
        # doing it for every one of 50,000 unknown keys was quadratic (minutes)
        for error in errors[:MAX_ERRORS_SHOWN]:
            loc = tuple(error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if not loc:  # cross-field checks name their class in the message
                match = re.match(r"classes\[(\d+)\]: ", message)
                if match:
                    loc, message = ("classes", int(match.group(1))), message[match.end() :]
            if error["type"] == "extra_forbidden":
                message = f"unknown key {loc[-1]!r} (typo?)"
            line = _line_of(root, loc)
            lines.append(f"{source}: {_field_path(loc)}" + (f" (line {line})" if line else "") + f": {message}")
        if len(errors) > MAX_ERRORS_SHOWN:
            lines.append(f"... and {len(errors) - MAX_ERRORS_SHOWN:,} more problems")
        raise TaxonomyError("\n".join(lines)) from None


def load_taxonomy(source: str, storage_options: Mapping[str, Any] | None = None) -> Taxonomy:
    """A shipped vocabulary by name, or a taxonomy YAML file from a path or fsspec URI."""
    if source in BUILTIN_VOCABULARIES:
        text = resources.files("schemas.vocabularies").joinpath(BUILTIN_VOCABULARIES[source]).read_text()
        return parse_taxonomy(text, source)
    import fsspec

    try:
        with fsspec.open(source, "rb", **(storage_options or {})) as f:
            data = f.read(MAX_TAXONOMY_BYTES + 1)  # never more, whatever the file's size
        if len(data) > MAX_TAXONOMY_BYTES:
            raise TaxonomyError(f"{source}: larger than {MAX_TAXONOMY_BYTES:,} bytes, the limit for a taxonomy")
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise TaxonomyError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except FileNotFoundError:
        known = ", ".join(BUILTIN_VOCABULARIES)
        raise TaxonomyError(f"{source}: no such file (and not a shipped vocabulary: {known})") from None
    return parse_taxonomy(text, source)


def check(source: str) -> int:
    """`san taxonomy check FILE`: 0 and a summary, or 2 and every problem with its line."""
    try:
        taxonomy = load_taxonomy(source)
    except TaxonomyError as e:
        print(e, file=sys.stderr)
        return 2
    print(
        f"{source}: taxonomy {taxonomy.name!r} version {taxonomy.version}: {len(taxonomy.classes)} classes, "
        f"{len(taxonomy.template_list())} templates, background {taxonomy.background}, "
        f"{len(taxonomy.distractor_names())} distractors; digest {taxonomy.digest()[:16]}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: san taxonomy check TAXONOMY.yaml|NAME", file=sys.stderr)
        return 2
    return check(args[0])


if __name__ == "__main__":
    sys.exit(main())

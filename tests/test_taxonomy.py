"""taxonomy.yaml validation (messages name file, field and line) and the shipped vocabularies."""

from __future__ import annotations

import textwrap

import pytest

from schemas.taxonomy import BUILTIN_VOCABULARIES, Taxonomy, TaxonomyError, load_taxonomy, main, parse_taxonomy
from schemas.templates import VILD_TEMPLATES

EXAMPLE = """\
name: street-scenes
version: 3
templates: vild
background: learned
distractors: none
classes:
  - id: 1
    name: road
    prompts: [road, street, route]
    color: "#804080"
  - id: 2
    name: person
"""


def _error(text: str) -> str:
    with pytest.raises(TaxonomyError) as info:
        parse_taxonomy(textwrap.dedent(text), "taxonomy.yaml")
    return str(info.value)


def test_the_documented_example_parses_with_defaults():
    taxonomy = parse_taxonomy(EXAMPLE, "taxonomy.yaml")
    assert [c.id for c in taxonomy.classes] == [1, 2]
    assert taxonomy.classes[0].prompt_list == ["road", "street", "route"]
    assert taxonomy.classes[1].prompt_list == ["person"]
    assert taxonomy.template_list() == list(VILD_TEMPLATES)
    assert taxonomy.classes[0].rgb() == (0x80, 0x40, 0x80)
    assert taxonomy.distractor_names() == []
    assert len(taxonomy.digest()) == 64
    assert parse_taxonomy(EXAMPLE, "again.yaml").digest() == taxonomy.digest()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("  - id: 2\n", "  - id: 1\n"), "taxonomy.yaml: classes[1] (line 11): id 1 is already used by classes[0]"),
        (("name: person", "name: road"), "classes[1] (line 11): name 'road' is already used by classes[0]"),
        (("prompts: [road, street, route]", "prompts: []"), "classes[0].prompts (line 9): prompts is empty"),
        (
            ("prompts: [road, street, route]", 'prompts: [road, " "]'),
            "classes[0].prompts (line 9): prompts contains a blank",
        ),
        (
            ("templates: vild", "templates: [a photo of a thing]"),
            "templates (line 3): template 'a photo of a thing' must",
        ),
        (("templates: vild", "templates: imagenet80"), "templates (line 3): unknown template set 'imagenet80'"),
        (('color: "#804080"', 'color: "#80408"'), "classes[0].color (line 10): colour '#80408' is not of the form"),
        (('color: "#804080"', 'colour: "#804080"'), "classes[0].colour (line 10): unknown key 'colour' (typo?)"),
        (("version: 3", "versoin: 3"), "versoin (line 2): unknown key 'versoin' (typo?)"),
        (("  - id: 2\n", "  - id: 0\n"), "classes[1].id (line 11): Input should be greater than or equal to 1"),
        (("background: learned", "background: blue"), "background (line 4): Input should be 'learned' or 'none'"),
        (("distractors: none", "distractors: coco"), "distractors (line 5): Input should be 'none', 'coco-all'"),
        (("    name: person\n", "    name: person\n    name: human\n"), "classes[1].name (line 13): duplicate key"),
        (("  - id: 2\n    name: person\n", "  - id: 2\n"), "classes[1].name (line 11): Field required"),
    ],
)
def test_every_validation_error_names_file_field_and_line(edit, expected):
    old, new = edit
    assert old in EXAMPLE
    assert expected in _error(EXAMPLE.replace(old, new))


def test_yaml_syntax_and_shape_errors():
    assert "taxonomy.yaml (line 3): not valid YAML" in _error("name: x\nclasses: [a, b\n")
    assert "expected a mapping" in _error("- just\n- a list\n")
    assert "classes (line 2): List should have at least 1 item" in _error("name: empty\nclasses: []\n")


def test_all_errors_are_reported_together():
    message = _error(EXAMPLE.replace('color: "#804080"', 'color: "red"').replace("version: 3", "verson: 3"))
    assert "verson" in message and "colour 'red'" in message
    assert len(message.splitlines()) == 2


def test_missing_file_and_cli_exit_codes(tmp_path, capsys):
    with pytest.raises(TaxonomyError, match="no such file"):
        load_taxonomy(str(tmp_path / "nope.yaml"))
    good = tmp_path / "good.yaml"
    good.write_text(EXAMPLE)
    assert main([str(good)]) == 0
    assert "2 classes" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.replace("name: person", "nam: person"))
    assert main([str(bad)]) == 2
    assert f"{bad}: classes[1].nam (line 12)" in capsys.readouterr().err


def test_taxonomy_from_s3(s3_bucket):
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).pipe(f"{s3_bucket}/vocab/taxonomy.yaml", EXAMPLE.encode())
    taxonomy = load_taxonomy(f"{s3_bucket}/vocab/taxonomy.yaml")
    assert taxonomy.name == "street-scenes"


@pytest.mark.parametrize(
    ("name", "count", "first", "last"),
    [
        ("coco-stuff-171", 171, "person", "wood"),
        ("voc20", 20, "aeroplane", "tv"),
        ("pc59", 59, "aeroplane", "wood"),
        ("ade150", 150, "wall", "flag"),
        ("pc459", 459, "accordion", "wool"),
        ("ade847", 847, "wall", "adding machine, totalizer, totaliser"),
    ],
)
def test_shipped_benchmark_vocabularies(name, count, first, last):
    taxonomy = load_taxonomy(name)
    assert len(taxonomy.classes) == count
    assert [c.id for c in taxonomy.classes] == list(range(1, count + 1))
    assert (taxonomy.classes[0].name, taxonomy.classes[-1].name) == (first, last)
    assert taxonomy.template_list() == list(VILD_TEMPLATES) and taxonomy.background == "learned"
    assert name in BUILTIN_VOCABULARIES


def test_reference_names_are_kept_verbatim():
    ade150 = [c.name for c in load_taxonomy("ade150").classes]
    assert ade150[8] == "window"  # the reference strips "window " to "window"
    assert "chest of drawers, chest, bureau, dresser" in ade150
    ade847 = [c.name for c in load_taxonomy("ade847").classes]
    assert ade847[244:246] == ["roof", "banner, streamer"]


def test_distractors_add_coco_names_not_already_present():
    base = parse_taxonomy(EXAMPLE.replace("name: person", "name: tree"), "t.yaml")
    coco_all = base.model_copy(update={"distractors": "coco-all"}).distractor_names()
    coco_stuff = base.model_copy(update={"distractors": "coco-stuff"}).distractor_names()
    assert len(coco_all) == 171 - 2  # "road" and "tree" are COCO-Stuff names already
    assert "person" in coco_all and "road" not in coco_all and "tree" not in coco_all
    assert len(coco_stuff) == 91 - 2 and "person" not in coco_stuff and "sky-other" in coco_stuff


def test_default_palette_is_stable_and_distinct():
    taxonomy = load_taxonomy("ade150")
    colours = [c.rgb() for c in taxonomy.classes]
    assert colours == [c.rgb() for c in load_taxonomy("ade150").classes]
    assert len(set(colours)) == 150


def test_programmatic_construction_is_validated_too():
    with pytest.raises(ValueError, match="already used"):
        Taxonomy(name="t", classes=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])

"""Every output says what made it (manifest and each Parquet file's metadata), and a run, an export
or a score that would mix in another model, taxonomy or preprocessing stops with exit 2."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from image_fixtures import jpeg_bytes

from jobs.evaluate import main as evaluate_main
from jobs.export import main as export_main
from jobs.label import main as label_main
from san_core.build import load_model
from san_core.checkpoint import save_checkpoint
from schemas.output import PROVENANCE_KEY, SCHEMA_VERSION, Provenance
from schemas.taxonomy import load_taxonomy

pytestmark = pytest.mark.usefixtures("ray_session")

OTHER_TAXONOMY = "name: other\nclasses:\n  - {id: 1, name: sky}\n  - {id: 2, name: person}\n"


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def labeled(ray_session, tmp_path_factory, tiny_weights):
    import skimage.data

    root = tmp_path_factory.mktemp("provenance")
    (root / "images").mkdir()
    (root / "images" / "astronaut.jpg").write_bytes(jpeg_bytes(skimage.data.astronaut()))
    (root / "other.yaml").write_text(OTHER_TAXONOMY)
    args = ["--input", str(root / "images"), "--output", str(root / "out"), *tiny_weights]
    assert label_main(["--vocab", "voc20", *args]) == 0
    return root, args


def test_each_file_and_the_manifest_say_what_made_them(labeled, parity_dir):
    root, _ = labeled
    (result,) = (root / "out").glob("labels-*.parquet")
    provenance = Provenance.from_schema(pq.read_schema(result))
    voc20 = load_taxonomy("voc20")
    assert provenance.taxonomy.digest == voc20.digest() and provenance.taxonomy.name == "voc20"
    assert provenance.short_side == 640 and provenance.max_long_side == 2560
    assert len(provenance.weights_digest) == 64 and len(provenance.model_config_digest) == 64
    manifest = json.loads((root / "out" / "_manifest.json").read_text())
    assert Provenance.model_validate(manifest["provenance"]) == provenance


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--vocab", "OTHER"], "taxonomy: voc20 v1"),
        (["--vocab", "voc20", "--short-side", "320"], "short_side: 640"),
        (["--vocab", "voc20", "--precision", "bf16"], "precision: fp32 in the output, bf16 now"),
    ],
)
def test_a_run_that_would_mix_stops_before_any_work(labeled, change, named, capsys):
    root, args = labeled
    before = _snapshot(root / "out")
    change = [str(root / "other.yaml") if c == "OTHER" else c for c in change]
    assert label_main([*change, *args]) == 2
    err = capsys.readouterr().err
    assert named in err and "--overwrite" in err and "new --output" in err
    assert _snapshot(root / "out") == before  # nothing touched, the manifest included


def test_an_output_of_an_earlier_schema_is_not_appended_to(labeled, tmp_path, capsys):
    import shutil

    root, args = labeled
    output = tmp_path / "schema1"
    shutil.copytree(root / "out", output)
    (result,) = output.glob("labels-*.parquet")
    table = pq.read_table(result)
    metadata = dict(table.schema.metadata)
    provenance = json.loads(metadata[PROVENANCE_KEY.encode()])
    provenance["schema_version"] = "1"  # as the previous release wrote it
    metadata[PROVENANCE_KEY.encode()] = json.dumps(provenance).encode()
    pq.write_table(table.replace_schema_metadata(metadata), result)
    (root / "images" / "new.jpg").write_bytes((root / "images" / "astronaut.jpg").read_bytes())
    try:
        run = [a if a != str(root / "out") else str(output) for a in args]
        assert label_main(["--vocab", "voc20", *run]) == 2
    finally:
        (root / "images" / "new.jpg").unlink()
    err = capsys.readouterr().err
    assert "output schema 1" in err and f"writes schema {SCHEMA_VERSION}" in err and "--overwrite" in err


def test_other_weights_are_refused_and_overwrite_is_the_way_out(labeled, parity_dir, tmp_path, capsys):
    root, args = labeled
    tiny = parity_dir / "tiny_a"
    loaded = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json"))
    other = tmp_path / "finetuned.safetensors"  # the same tensors, another file: another sha256
    save_checkpoint(loaded.model, loaded.model.config, str(other))
    weights = ["--checkpoint", str(other)]
    base = [a for a in args if a not in tiny_weights_of(args)]
    assert label_main(["--vocab", "voc20", *base, *weights]) == 2
    assert "weights_digest:" in capsys.readouterr().err
    assert label_main(["--vocab", "voc20", *base, *weights, "--overwrite"]) == 0


def tiny_weights_of(args: list[str]) -> list[str]:
    at = args.index("--checkpoint")
    return args[at : at + 4]  # --checkpoint FILE --model-config FILE


def test_export_and_score_refuse_another_taxonomy(labeled, tmp_path, capsys):
    root, _ = labeled
    other = str(root / "other.yaml")
    assert export_main(["--input", str(root / "out"), "--vocab", other, "--output", str(tmp_path / "c.json")]) == 2
    assert "was labeled with taxonomy voc20" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
    score = ["score", "--input", str(root / "out"), "--ground-truth", str(tmp_path), "--vocab", other]
    assert evaluate_main([*score, "--output", str(tmp_path / "report")]) == 2

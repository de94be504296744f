"""Runs in a row into the same output: on S3 each exits 0 with a manifest; files the job did not
write survive every run and --overwrite; a result file a killed run left incomplete is replaced."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from image_fixtures import jpeg_bytes

from jobs.label import main as label_main
from pipeline.store import LabelStore
from pipeline.store.layout import is_own_result

pytestmark = pytest.mark.usefixtures("ray_session")


def _photo(name: str) -> bytes:
    import skimage.data

    return jpeg_bytes(getattr(skimage.data, name)())


def test_three_runs_in_a_row_into_s3_each_finish_with_a_manifest(s3_bucket, tiny_weights, capfd):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    output = f"{s3_bucket}/labels"
    secret = "wJalrXUtnFEMI-K7MDENG-NOT-A-REAL-SECRET"  # moto takes any credentials
    options = json.dumps({"key": "AKIAIOSFODNN7EXAMPLE", "secret": secret})
    args = ["--vocab", "voc20", "--input", f"{s3_bucket}/in/", "--output", output, *tiny_weights]
    args += ["--storage-options", options]
    for run, name in enumerate(("astronaut", "coffee", "chelsea"), start=1):
        fs.pipe(f"{s3_bucket}/in/{name}.jpg", _photo(name))  # one new image a night
        assert label_main(args) == 0, f"run {run}"
        manifest = json.loads(fs.cat(f"{output}/_manifest.json"))
        assert manifest["counts"] == {"inputs": run, "labeled": 1, "failed": 0, "skipped": run - 1}
    uris = [row["image_uri"] for row in LabelStore(output).rows()]
    assert sorted(uris) == sorted(f"{s3_bucket}/in/{n}.jpg" for n in ("astronaut", "coffee", "chelsea"))
    assert all(is_own_result(p) for p in fs.find(output) if p.endswith(".parquet"))
    assert len(fs.ls(f"{output}/_row_index")) == 3  # each run indexed its own rows
    written = b"".join(fs.cat(p) for p in fs.find(output))  # manifest, Parquet data and metadata
    captured = capfd.readouterr()
    assert secret.encode() not in written and secret not in captured.out + captured.err


def test_files_the_job_did_not_write_survive_and_its_own_broken_file_is_replaced(tmp_path, tiny_weights):
    images, output = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    (images / "astronaut.jpg").write_bytes(_photo("astronaut"))
    args = ["--vocab", "voc20", "--input", str(images), "--output", str(output), *tiny_weights]
    assert label_main(args) == 0
    (own,) = [p for p in output.glob("*.parquet")]
    assert own.name.startswith("labels-")

    (output / "reports").mkdir()
    foreign = {
        output / "other_team_data.parquet": None,
        output / "reports" / "q3.parquet": None,
        output / "notes.parquet": b"not parquet at all, and not ours",
    }
    for path, data in foreign.items():
        if data is None:
            pq.write_table(pa.table({"x": [1, 2, 3]}), path)
        else:
            path.write_bytes(data)
    before = {path: path.read_bytes() for path in foreign}

    (images / "coffee.jpg").write_bytes(_photo("coffee"))
    truncated = output / "labels-0123456789abcdef0123456789abcdef_000001.parquet"
    truncated.write_bytes(own.read_bytes()[:100])  # as a writer killed mid-file leaves it
    assert label_main(args) == 0
    assert not truncated.exists()
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 2, "labeled": 1, "failed": 0, "skipped": 1}
    assert label_main([*args, "--overwrite"]) == 0
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path.name} was changed"
    assert sorted(r["image_uri"] for r in LabelStore(str(output)).rows()) == sorted(
        str(images / n) for n in ("astronaut.jpg", "coffee.jpg")
    )

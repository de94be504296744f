"""jobs/finetune.py on a real local Ray: two DDP workers (gloo) training the tiny SAN on synthetic
pairs, checkpoints, validation, the exported model labeling through jobs/label.py, and the
checks made before Ray starts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open
from training_fixtures import TAXONOMY_YAML, write_detectron2_dataset, write_manifest_dataset

from jobs.finetune import main as finetune_main
from jobs.label import main as label_main
from pipeline.training.data import AugmentConfig, SampleOrder, list_training_pairs
from pipeline.training.job import TrainDatasetFactory, total_steps
from san_core.build import load_model
from schemas.jobs import FinetuneConfig, ModelChoice


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune-data")
    manifest = write_manifest_dataset(root / "train", 6)
    broken = root / "train" / "images" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")  # a JPEG header and nothing else
    with manifest.open("a") as f:
        f.write(f"{broken},{root / 'train' / 'labels' / '0000.png'}\n")
    taxonomy = root / "taxonomy.yaml"
    taxonomy.write_text(TAXONOMY_YAML)
    val = write_detectron2_dataset(root / "dataset", "validation", 3)
    return {"root": root, "manifest": manifest, "taxonomy": taxonomy, "val": val}


@pytest.fixture(scope="module")
def two_worker_run(data, parity_dir, tmp_path_factory) -> dict:
    import ray

    ray.shutdown()  # two training workers need a Ray of their own size, not the shared one (conftest)
    storage = tmp_path_factory.mktemp("finetune-run") / "run"
    tiny = parity_dir / "tiny_a"
    args = [
        "--vocab", str(data["taxonomy"]),
        "--train", str(data["manifest"]),
        "--val", str(data["val"]),
        "--checkpoint", str(tiny / "checkpoint.pth"),
        "--model-config", str(tiny / "config.json"),
        "--output", str(storage),
        "--workers", "2",
        "--batch-size", "4",
        "--max-steps", "30",
        "--crop-size", "64",
        "--lr", "1e-3",
        "--eval-every", "15",
        "--checkpoint-every", "10",
        "--checkpoints-to-keep", "3",
        "--log-every", "5",
    ]  # fmt: skip
    rc = finetune_main(args)
    summary_path = storage / "model" / "training_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return {"rc": rc, "storage": storage, "summary": summary, "tiny": tiny}


def test_two_workers_train_checkpoint_and_validate(two_worker_run):
    assert two_worker_run["rc"] == 0
    summary, storage = two_worker_run["summary"], two_worker_run["storage"]
    assert summary["step"] == 30 and summary["samples"] == 120
    assert [row["step"] for row in summary["losses"]] == list(range(1, 31))
    assert summary["resumed_at"] == []
    # validation every 15 steps, as mIoU and the other three metrics, printed as a table too
    assert [row["step"] for row in summary["validations"]] == [15, 30]
    assert all(0 <= row["mIoU"] <= 100 and row["images"] == 3 for row in summary["validations"])  # 3 pairs, 2 shards
    table = (storage / "model" / "validation.md").read_text()
    assert table.startswith("| step | mIoU | fwIoU | mACC | pACC |") and "| 30 |" in table
    # the broken pair was reported and replaced, and lost nothing else
    assert any("broken.jpg" in problem for problem in summary["skipped"])
    # Ray Train checkpoints: only trainable tensors, plus optimizer, scheduler, step and position
    checkpoints = sorted(p.name for p in (storage / "train").glob("step_*"))
    assert checkpoints == ["step_00000010", "step_00000020", "step_00000030"]
    last = storage / "train" / "step_00000030"
    state = json.loads((last / "train_state.json").read_text())
    assert (state["step"], state["samples"]) == (30, 120)
    saved = torch.load(last / "optimizer.pt", weights_only=True)
    assert saved["scheduler"]["last_epoch"] == 30 and saved["optimizer"]["state"]
    tiny = two_worker_run["tiny"]
    model = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json")).model
    with safe_open(str(last / "trainable.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.trainable_parameter_names())
    assert json.loads((storage / "train" / "position.json").read_text())["samples"] == 120


def test_loss_falls_when_overfitting_a_handful_of_images(two_worker_run):
    losses = [row["loss"] for row in two_worker_run["summary"]["losses"]]
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses


def test_export_keeps_clip_frozen_and_labels_through_the_label_job(two_worker_run, data, tmp_path):
    tiny, storage = two_worker_run["tiny"], two_worker_run["storage"]
    init = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json")).model
    export = storage / "model" / "model.safetensors"
    trained = load_model(checkpoint=str(export)).model  # the config travels in the file
    trainable = set(init.trainable_parameter_names())
    assert two_worker_run["summary"]["trainable_parameters"] == init.freeze_for_finetuning()
    init_state, trained_state = init.state_dict(), trained.state_dict()
    for name, tensor in init_state.items():
        if name not in trainable:
            assert torch.equal(tensor, trained_state[name]), f"frozen tensor {name} changed"
    changed = [n for n in trainable if not torch.equal(init_state[n], trained_state[n])]
    assert len(changed) > 0.9 * len(trainable)
    assert "text_classifier.bg_embed" in changed and "clip_features.positional_embedding" in changed

    output = tmp_path / "labels"
    images = data["root"] / "train" / "images"
    rc = label_main(
        ["--vocab", str(storage / "model" / "taxonomy.yaml"), "--input", str(images), "--output", str(output),
         "--checkpoint", str(export), "--vocab-cache", str(tmp_path / "cache"), "--max-error-ratio", "0.2"]
    )  # fmt: skip
    assert rc == 0
    rows = pq.read_table(output).to_pylist()
    good = [r for r in rows if r["error"] is None]
    assert len(rows) == 7 and len(good) == 6  # the broken image is an error row
    assert all(r["model_id"] == str(export) for r in good)
    assert all({s["class_id"] for s in r["segments"]} <= {1, 2, 3} for r in good)


def test_pairs_from_manifests_and_detectron2_folders(data, tmp_path):
    pairs = list_training_pairs(str(data["manifest"]))
    assert len(pairs) == 7 and pairs.values == "ids"
    assert pairs.value_to_index([1, 2, 3]) == {1: 0, 2: 1, 3: 2}
    folder = list_training_pairs(str(data["val"]))
    assert len(folder) == 3 and folder.values == "indices"
    assert all("annotations_detectron2/validation" in uri for uri in folder.label_uris)
    table = pa.table({"image_uri": pairs.image_uris, "label_uri": pairs.label_uris, "extra": range(7)})
    pq.write_table(table, tmp_path / "pairs.parquet")
    from_parquet = list_training_pairs(str(tmp_path / "pairs.parquet"))
    assert from_parquet.image_uris == pairs.image_uris and from_parquet.label_uris == pairs.label_uris
    relative = tmp_path / "relative.csv"  # entries relative to the manifest's folder
    relative.write_text("image_uri,label_uri\na/1.jpg,b/1.png\n")
    assert list_training_pairs(str(relative)).image_uris == [str(tmp_path / "a" / "1.jpg")]


def _args(data: dict, storage: Path, *extra: str) -> list[str]:
    return ["--vocab", str(data["taxonomy"]), "--train", str(data["manifest"]), "--output", str(storage), *extra]


def test_bad_flags_and_inputs_fail_before_ray_starts(data, parity_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    tiny = parity_dir / "tiny_a"
    init = ["--checkpoint", str(tiny / "checkpoint.pth"), "--model-config", str(tiny / "config.json")]
    assert finetune_main(_args(data, tmp_path / "a", *init)) == 2
    assert "--max-steps or --epochs" in capsys.readouterr().err
    assert finetune_main(_args(data, tmp_path / "a", *init, "--max-steps", "2", "--workers", "3")) == 2
    assert "multiple of --workers 3" in capsys.readouterr().err

    no_labels = tmp_path / "bad.csv"
    no_labels.write_text("uri\nx.jpg\n")
    args = ["--vocab", str(data["taxonomy"]), "--train", str(no_labels), "--output", str(tmp_path / "b")]
    assert finetune_main([*args, *init, "--max-steps", "2"]) == 1
    assert "has no 'image_uri' or 'label_uri' column" in capsys.readouterr().err

    lonely = tmp_path / "ds" / "images" / "training"
    lonely.mkdir(parents=True)
    (lonely / "x.jpg").write_bytes(b"")
    args = ["--vocab", str(data["taxonomy"]), "--train", str(lonely), "--output", str(tmp_path / "c")]
    assert finetune_main([*args, *init, "--max-steps", "2"]) == 1
    assert "have no label map in" in capsys.readouterr().err

    # an unavailable preset names the file to pre-stage and the flag that takes it
    assert finetune_main(_args(data, tmp_path / "d", "--model", "san-vit-b16", "--max-steps", "2")) == 1
    err = capsys.readouterr().err
    assert "san_vit_b_16.pth" in err and "--checkpoint /path/to/san_vit_b_16.pth" in err


def test_run_length_from_steps_or_epochs():
    def config(**length: int) -> FinetuneConfig:
        return FinetuneConfig(vocab="v", train="t", init=ModelChoice(model="san-vit-b16"), output="s", **length)

    assert total_steps(config(max_steps=7), 100) == 7
    assert total_steps(config(epochs=2, batch_size=4), 10) == 5  # whole global batches
    assert total_steps(config(epochs=2, max_steps=3), 10) == 3  # the smaller


def test_the_sample_stream_starts_at_the_checkpoint_position(no_ray_session, data, tmp_path):
    import ray

    pairs = list_training_pairs(str(data["manifest"]))
    factory = TrainDatasetFactory(
        pairs_ref=[(pairs.image_uris, pairs.label_uris)],
        order=SampleOrder(len(pairs), seed=0),
        augment_config=AugmentConfig.for_crop(32, photometric=False),
        total_samples=20,
        position_uri=str(tmp_path / "position.json"),
        storage_options={},
        loaders=1,
        batch_size=2,
    )
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        fresh = factory().take_all()
        (tmp_path / "position.json").write_text(json.dumps({"step": 4, "samples": 8, "init_digest": None}))
        resumed = factory().take_all()
    finally:
        ray.shutdown()
    assert [row["sample"] for row in fresh] == list(range(20))
    assert [row["sample"] for row in resumed] == list(range(8, 20))
    for before, after in zip(fresh[8:], resumed, strict=True):  # the same crops as the first time
        assert np.array_equal(before["image"], after["image"]) and np.array_equal(before["labels"], after["labels"])

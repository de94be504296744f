"""bf16 autocast for labeling: `auto` follows the hardware, bf16 labels agree with fp32 wherever
fp32 is sure of its label, and the job records the precision in its manifest and provenance."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray
import skimage.data
import torch
from image_fixtures import jpeg_bytes
from PIL import Image

from jobs.label import main as label_main
from pipeline.labeling.actors import cluster_gpu_types
from san_core.build import load_model
from san_core.precision import Bf16Weights, cpu_runs_bf16_natively, resolve_precision
from schemas.output import Provenance
from schemas.taxonomy import load_taxonomy

pytestmark = pytest.mark.usefixtures("ray_session")


def test_auto_follows_the_hardware():
    assert resolve_precision("fp32", "cuda") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cuda") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_runs_bf16_natively() else "fp32")
    with pytest.raises(ValueError, match="fp32, bf16, auto"):
        resolve_precision("fp16", "cpu")


def test_auto_is_fp32_on_a_cluster_with_gpus_that_only_emulate_bf16():
    # the driver sees the cluster's cards only by the names Ray gives them
    resources = {"CPU": 16.0, "GPU": 4.0, "accelerator_type:T4": 1.0, "accelerator_type:A100": 0.0}
    assert cluster_gpu_types(resources) == {"T4"}
    assert resolve_precision("auto", "cuda", cluster_gpu_types(resources)) == "fp32"
    assert resolve_precision("auto", "cuda", {"A100", "H200"}) == "bf16"
    assert resolve_precision("auto", "cuda", {"A100", "V100"}) == "fp32"  # one precision for every actor
    assert resolve_precision("bf16", "cuda", {"T4"}) == "bf16"  # asked for, not chosen
    # Ray names the cards it detects: none on a CPU-only machine
    assert bool(cluster_gpu_types(ray.cluster_resources())) == bool(ray.cluster_resources().get("GPU"))


def test_bf16_labels_agree_with_fp32_where_fp32_is_sure(parity_dir):
    tiny = parity_dir / "tiny_a"
    model = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json")).model
    names = [c.name for c in load_taxonomy("voc20").classes]
    embeddings = model.class_embeddings(names)
    confident_pixels = agreeing = 0
    for photo in ("astronaut", "coffee", "chelsea", "rocket"):
        rgb = Image.fromarray(getattr(skimage.data, photo)()[..., :3])
        rgb = rgb.resize((round(96 * rgb.width / rgb.height), 96), Image.BILINEAR)  # short side 96, padded
        image = torch.from_numpy(np.asarray(rgb)).permute(2, 0, 1).float()
        (scores,) = model.predict([image], embeddings)
        ((labels32, _),) = model.predict_labels([image], embeddings, precision="fp32")
        ((labels16, _),) = model.predict_labels([image], embeddings, precision="bf16")
        top2 = scores.topk(2, dim=0).values
        sure = (top2[0] - top2[1]) >= 0.01 * top2[0]
        assert torch.equal(labels32[sure], scores.argmax(0)[sure])  # fp32 is the full maps' argmax
        confident_pixels += int(sure.sum())
        agreeing += int((labels16 == labels32)[sure].sum())
    assert confident_pixels > 0.5 * 4 * 96 * 96
    assert agreeing / confident_pixels >= 0.995, agreeing / confident_pixels


def test_bf16_weights_cast_once_give_autocasts_own_outputs(parity_dir):
    tiny = parity_dir / "tiny_a"
    model = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json")).model
    embeddings = model.class_embeddings([c.name for c in load_taxonomy("voc20").classes])
    image = torch.from_numpy(skimage.data.astronaut()[::5, ::4].copy()).permute(2, 0, 1).float()  # [3, 103, 128]
    own = {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()}

    def outputs(context) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), context:
            out = model([image], embeddings)
        return out.class_logits, out.mask_logits

    def plain_autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    for _ in range(2):  # the copies made by the first call serve the second
        lent = outputs(model.inference_precision("bf16"))
        assert all(torch.equal(a, b) for a, b in zip(lent, outputs(plain_autocast()), strict=True))
    assert lent[0].dtype == torch.bfloat16
    assert {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()} == own  # handed back
    assert outputs(model.inference_precision("fp32"))[0].dtype == torch.float32

    # a weight changed in place (an optimiser step, load_state_dict) is cast again
    with torch.no_grad():
        model.side_adapter.mask_decoder.query_mlp.layers[0].weight.mul_(1.5)
    changed = outputs(model.inference_precision("bf16"))
    assert all(torch.equal(a, b) for a, b in zip(changed, outputs(plain_autocast()), strict=True))
    assert not torch.equal(changed[1], lent[1])

    with pytest.raises(RuntimeError, match="inside"), model.inference_precision("bf16"):
        assert model.side_adapter.mask_decoder.query_mlp.layers[0].weight.dtype == torch.bfloat16
        raise RuntimeError("an error inside the context")
    assert {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()} == own


def test_bf16_weights_covers_the_matrix_product_layers_and_lends_the_same_copies():
    attention = torch.nn.MultiheadAttention(3, 1, add_bias_kv=True)  # bias_k, bias_v: concatenated, kept fp32
    layers = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), attention)
    weights = Bf16Weights([layers])
    names = {name for name, p in layers.named_parameters() if any(p is q for q in weights.parameters)}
    assert names == {"0.weight", "0.bias", "2.in_proj_weight", "2.in_proj_bias", "2.out_proj.weight", "2.out_proj.bias"}
    with weights.lent():
        first = layers[0].weight.data_ptr()
        assert layers[0].weight.dtype == torch.bfloat16 and layers[1].weight.dtype == torch.float32
    with weights.lent():
        assert layers[0].weight.data_ptr() == first
    assert layers[0].weight.dtype == torch.float32


def test_the_job_records_the_precision(tmp_path, tiny_weights):
    images = tmp_path / "images"
    images.mkdir()
    (images / "coffee.jpg").write_bytes(jpeg_bytes(skimage.data.coffee()))
    output = tmp_path / "out"
    args = ["--vocab", "voc20", "--input", str(images), "--output", str(output), "--precision", "bf16", *tiny_weights]
    assert label_main(args) == 0
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["precision"] == {"asked": "bf16", "used": "bf16"}
    assert manifest["provenance"]["precision"] == "bf16"
    (result,) = output.glob("labels-*.parquet")
    assert Provenance.from_schema(pq.read_schema(result)).precision == "bf16"
    assert pq.read_table(result).column("error").null_count == 1

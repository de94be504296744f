"""The fine-tuning optimiser: decay groups, poly schedule, full-model gradient clipping."""

from __future__ import annotations

import pytest
import torch

from san_core.build import load_model
from san_core.optim import build_optimizer, clip_full_model_gradients, poly_schedule


@pytest.fixture(scope="module")
def model(parity_dir):
    tiny = parity_dir / "tiny_a"
    m = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json")).model
    m.freeze_for_finetuning()
    return m


def test_no_weight_decay_on_embeddings_and_norms(model):
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=1e-4)
    decayed, plain = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    assert decayed["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0
    assert {
        "side_adapter.pos_embed",
        "side_adapter.query_embed",
        "side_adapter.query_pos_embed",
        "clip_features.positional_embedding",
    } <= plain_names
    assert "side_adapter.blocks.0.norm1.weight" in plain_names
    assert "side_adapter.fusion_layers.layer_0.input_proj.0.weight" in plain_names  # channel LayerNorm
    assert "side_adapter.blocks.0.attn.qkv.weight" in decayed_names
    assert plain_names.isdisjoint(decayed_names)
    assert plain_names | decayed_names == set(model.trainable_parameter_names())


def test_poly_schedule_and_clipping(model):
    optimizer = build_optimizer(model, lr=1e-4)
    schedule = poly_schedule(optimizer, max_steps=10)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(1e-4) and rates[5] == pytest.approx(1e-4 * 0.5**0.9)
    assert optimizer.param_groups[0]["lr"] == 0.0
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    before = clip_full_model_gradients(model, 0.01)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert before > 0.01 and after.item() == pytest.approx(0.01, rel=1e-4)

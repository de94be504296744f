"""Model behaviour: batching invariance, and inference computes only what it returns."""

from __future__ import annotations

import pytest
import torch

from san_core.build import build_model, load_model
from san_core.postprocess import semantic_scores
from san_core.presets import PRESETS


@pytest.fixture(scope="module")
def tiny_model(parity_dir):
    tiny = parity_dir / "tiny_a"
    return load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json")).model


def _images(sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.rand(3, h, w, generator=generator) * 255 for h, w in sizes]


def test_mixed_size_batch_equals_one_image_at_a_time(tiny_model, tiny_inputs):
    # two share a padded size (128x160), one pads to 96x64 and one to 160x128
    sizes = [(100, 150), (128, 140), (70, 64), (150, 120)]
    images = _images(sizes)
    out_sizes = [(h * 2, w) for h, w in sizes]
    vocab = tiny_model.class_embeddings(tiny_inputs["vocabulary"])
    batched = tiny_model.predict(images, vocab, out_sizes)
    for image, size, scores in zip(images, out_sizes, batched, strict=True):
        (alone,) = tiny_model.predict([image], vocab, [size])
        assert scores.shape == (len(tiny_inputs["vocabulary"]), *size)
        assert torch.allclose(scores, alone, atol=1e-5, rtol=0)


def test_padding_together_changes_results_which_is_why_predict_groups(tiny_model, tiny_inputs):
    """Guards the grouping: the reference's shared padding really does change a smaller image."""
    images = _images([(128, 160), (64, 64)])
    vocab = tiny_model.class_embeddings(tiny_inputs["vocabulary"])
    with torch.no_grad():
        out = tiny_model(images, vocab)
    shared = semantic_scores(out.class_logits[1], out.mask_logits[1], out.padded_size, (64, 64), (64, 64))
    (alone,) = tiny_model.predict([images[1]], vocab)
    assert (shared - alone).abs().max().item() > 1e-4


def test_inference_runs_only_the_output_branch(tiny_model, tiny_inputs):
    calls: dict[str, int] = {}

    def count(name):
        def hook(*_):
            calls[name] = calls.get(name, 0) + 1

        return hook

    handles = [tiny_model.side_adapter.mask_decoder.register_forward_hook(count("mask_decoder"))]
    for i, block in enumerate(tiny_model.side_adapter.blocks):
        handles.append(block.register_forward_hook(count(f"side_block_{i}")))
    for i, block in enumerate(tiny_model.clip_features.resblocks):  # run through SDPA: count each MLP's first layer
        handles.append(block.mlp.c_fc.register_forward_hook(count(f"clip_block_{i}")))
    handles.append(tiny_model.text_classifier.transformer.register_forward_hook(count("text_encoder")))
    vocab = tiny_model.class_embeddings(tiny_inputs["vocabulary"])
    text_calls = calls.pop("text_encoder")
    assert text_calls == 1  # 5 names x 14 templates in one batch
    try:
        tiny_model.predict(_images([(100, 150), (110, 140)]), vocab)  # one padded size
    finally:
        for handle in handles:
            handle.remove()
    depth = tiny_model.config.side_adapter.depth
    output_block = max(tiny_model.config.side_adapter.deep_supervision_idxs)
    assert calls["mask_decoder"] == 1  # no deep-supervision decoding at inference
    assert "text_encoder" not in calls  # the vocabulary is encoded once, outside the image batches
    assert all(calls[f"clip_block_{i}"] == 1 for i in range(len(tiny_model.clip_features.resblocks)))
    assert [calls.get(f"side_block_{i}", 0) for i in range(depth)] == [1] * output_block + [0] * (depth - output_block)


def test_training_mode_returns_every_supervised_block(tiny_model):
    image = torch.randn(1, 3, 64, 96)
    clip_input = torch.nn.functional.interpolate(image, scale_factor=0.5, mode="bilinear", align_corners=False)
    with torch.no_grad():
        features = tiny_model.clip_features(clip_input)
        masks, biases = tiny_model.side_adapter(image, features.maps, all_supervised=True)
    assert len(masks) == len(tiny_model.config.side_adapter.deep_supervision_idxs)
    assert masks[-1].shape == (1, tiny_model.config.side_adapter.num_queries, 4, 6)
    assert biases[-1][0].shape == (1, tiny_model.config.side_adapter.attn_bias_heads, 8, 4, 6)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_have_the_published_shapes(name):
    model = build_model(PRESETS[name].config, "meta")
    cfg = PRESETS[name].config
    assert cfg.side_adapter.num_queries == 100 and cfg.side_adapter.embed_dim == 240
    assert len(model.side_adapter.blocks) == 8
    clip_depth = len(model.clip_features.resblocks) + len(model.recognition_head.resblocks)
    assert clip_depth == (12 if name == "san-vit-b16" else 24)
    assert len(model.clip_features.resblocks) == cfg.san.clip_feature_last_layer
    assert model.recognition_head.num_heads == cfg.side_adapter.attn_bias_heads


def test_inference_shortcuts_compute_the_same_bits_as_the_plain_modules(tiny_model):
    """The inference-only rewrites that change no bit (in place, or without a kernel's side work)."""
    from torch.nn import functional as F

    from san_core.recognition_head import window_max

    generator = torch.Generator().manual_seed(3)
    for shape, window in [((1, 24, 40, 40), (2, 2)), ((2, 12, 40, 60), (2, 2)), ((1, 3, 9, 12), (3, 4))]:
        x = torch.randn(*shape, generator=generator)
        assert torch.equal(window_max(x, *window), F.max_pool2d(x, window))

    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8, generator=generator)
    mean, std = tiny_model.pixel_mean, tiny_model.pixel_std
    for given in (image, image.float(), image.permute(1, 2, 0).contiguous().permute(2, 0, 1)):
        batch = tiny_model.preprocess([given])
        assert batch.shape == (1, 3, *tiny_model.padded_size(50, 70)) and batch.dtype == torch.float32
        assert torch.equal(batch[0, :, :50, :70], (image.float() - mean) / std)
        assert not batch[0, :, 50:].any() and not batch[0, :, :, 70:].any()


def test_rewritten_layers_equal_the_reference_formulas():
    """The layers computed in another order than the reference's, each against the reference's
    own module or formula: CLIP's blocks (SDPA, QuickGELU folded into the MLP's products,
    residuals added as the products' initial values) against open_clip's own block, the side
    adapter's blocks against the plain composition of their layers, the convolutions run as
    matrix products, the fusion on CLIP's tokens, and the attention-bias rescale folded into the
    decoder's small factors. Float rounding apart, the same numbers, with gradients intact."""
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock
    from torch import nn
    from torch.nn import functional as F

    from san_core.clip_blocks import block_forward
    from san_core.mask_decoder import MaskDecoder
    from san_core.matrix_convs import PointwiseConv2d, patch_tokens
    from san_core.side_adapter import AddFusion
    from san_core.vit_blocks import Block

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)

    for scale in (None, 0.5):  # without a layer scale (ViT-B/16's CLIP), and with one
        block = ResidualAttentionBlock(64, 2, act_layer=QuickGELU, ls_init_value=scale).eval()
        tokens = torch.randn(2, 17, 64, generator=generator)
        with torch.no_grad():
            expected = block(tokens)  # open_clip's own forward: nn.MultiheadAttention, QuickGELU
            assert torch.allclose(block_forward(block, tokens), expected, atol=1e-5, rtol=1e-5)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.allclose(block_forward(block, tokens).float(), expected, atol=0.1, rtol=0.05)
        tokens.requires_grad_(True)
        found = block_forward(block, tokens)  # with autograd: the module's own layers
        assert torch.allclose(found, expected, atol=1e-5, rtol=1e-5)
        found.sum().backward()
        assert tokens.grad is not None and tokens.grad.abs().sum() > 0

    side_block = Block(48, 4, 4.0).eval()
    tokens = torch.randn(2, 30, 48, generator=generator, requires_grad=True)
    after_attention = tokens + side_block.attn.proj(side_block.attn.heads(side_block.norm1(tokens)))
    expected = after_attention + side_block.mlp(side_block.norm2(after_attention))
    with torch.no_grad():  # inference: each residual is its branch's last product's initial value
        assert torch.allclose(side_block(tokens), expected, atol=1e-5, rtol=1e-5)
    found = side_block(tokens)  # with autograd: the plain sums, gradients intact
    assert torch.allclose(found, expected, atol=1e-5, rtol=1e-5)
    found.sum().backward()
    grads = [p.grad for p in (tokens, side_block.attn.proj.weight, side_block.mlp.fc2.bias)]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)

    for shape, patch, bias in [((2, 3, 64, 48), 16, True), ((1, 3, 70, 37), 16, False), ((1, 3, 12, 12), 4, True)]:
        conv = nn.Conv2d(3, 24, kernel_size=patch, stride=patch, bias=bias)
        image = torch.randn(*shape, generator=generator)
        found, grid = patch_tokens(conv, image)
        reference = conv(image)
        assert grid == tuple(reference.shape[-2:])
        assert torch.allclose(found, reference.flatten(2).transpose(1, 2), atol=1e-5)
    with pytest.raises(ValueError, match="not a patch embedding"):
        patch_tokens(nn.Conv2d(3, 8, kernel_size=4, stride=2), torch.randn(1, 3, 8, 8))

    pointwise = PointwiseConv2d(20, 12)
    for pixels in (torch.randn(2, 20, 5, 7, generator=generator), torch.randn(1, 35, 20, generator=generator)):
        pixels = pixels if pixels.dim() == 4 else pixels.transpose(1, 2).reshape(1, 20, 5, 7)  # a strided view
        reference = F.conv2d(pixels, pointwise.weight, pointwise.bias)
        assert torch.allclose(pointwise(pixels), reference, atol=1e-5)

    fusion = AddFusion(32, 12)
    for param in fusion.parameters():
        nn.init.normal_(param, generator=generator)
    for clip_grid, side_grid in [((20, 20), (40, 40)), ((7, 9), (13, 17)), ((6, 6), (6, 6))]:
        clip_tokens = torch.randn(2, 1 + clip_grid[0] * clip_grid[1], 32, generator=generator)
        clip_map = clip_tokens[:, 1:].transpose(1, 2).reshape(2, 32, *clip_grid)  # as CLIP's features hand it
        patches = torch.randn(2, side_grid[0] * side_grid[1], 12, generator=generator)
        norm, conv = fusion.input_proj
        centered = clip_map - clip_map.mean(1, keepdim=True)
        normed = centered / torch.sqrt(centered.pow(2).mean(1, keepdim=True) + norm.eps)
        normed = norm.weight[:, None, None] * normed + norm.bias[:, None, None]
        projected = F.interpolate(conv(normed), size=side_grid, mode="bilinear", align_corners=False)
        expected = patches + projected.flatten(2).transpose(1, 2)
        assert torch.allclose(fusion(patches, clip_map, side_grid), expected, atol=1e-4)

    decoder = MaskDecoder(
        16, attn_heads=2, attn_layers=3, embed_channels=8, mlp_channels=16, mlp_num_layers=3, rescale_attn_bias=True
    )
    for param in decoder.parameters():
        nn.init.normal_(param, std=0.5, generator=generator)
    query = torch.randn(2, 5, 16, generator=generator, requires_grad=True)
    pixels = torch.randn(2, 16, 4, 6, generator=generator)
    mask_logits, biases = decoder(query, pixels)
    embedded = decoder.query_mlp(query)  # the reference: every (layer, head) map, then the rescale
    maps = decoder.attn_mlp(pixels).reshape(2, 3, 2, 8, 4, 6)
    reference = torch.einsum("bqc,blmchw->blmqhw", embedded, maps)
    reference = decoder.bias_scaling(reference[..., None]).squeeze(-1)
    assert torch.allclose(torch.stack(biases, dim=1), reference, atol=1e-4, rtol=1e-5)
    assert torch.allclose(mask_logits, torch.einsum("bqc,bchw->bqhw", embedded, decoder.pix_mlp(pixels)), atol=1e-5)
    biases[0].sum().backward()  # gradients reach the query and the rescale
    assert query.grad is not None and decoder.bias_scaling.weight.grad is not None


def test_cached_positional_embeddings_follow_the_weights_and_the_grid(tiny_model, tiny_inputs):
    """The positional embeddings resized to a grid are kept between calls; a new grid, new
    weights (load_state_dict) or an in-place update recompute them, and training gets a graph."""
    import copy

    model = copy.deepcopy(tiny_model)
    vocab = model.class_embeddings(tiny_inputs["vocabulary"])
    small, large = _images([(64, 96)]), _images([(96, 128)])

    def fresh_outputs(images):  # a new copy of the weights: nothing cached
        fresh = copy.deepcopy(model)
        fresh.clip_features.grid_positions = type(fresh.clip_features.grid_positions)()
        fresh.side_adapter.positions = type(fresh.side_adapter.positions)()
        with torch.no_grad():
            return fresh(images, vocab).mask_logits

    with torch.no_grad():
        first = model(small, vocab).mask_logits
        assert torch.equal(model(large, vocab).mask_logits, fresh_outputs(large))  # a new grid
        assert torch.equal(model(small, vocab).mask_logits, first)
        state = model.state_dict()
        state["clip_features.positional_embedding"] = state["clip_features.positional_embedding"] * 1.5
        state["side_adapter.pos_embed"] = state["side_adapter.pos_embed"] + 0.1
        model.load_state_dict(state)
        changed = model(small, vocab).mask_logits
        assert not torch.equal(changed, first)
        assert torch.equal(changed, fresh_outputs(small))
        model.side_adapter.query_pos_embed.mul_(0.5)  # an optimiser's kind of update
        assert torch.equal(model(small, vocab).mask_logits, fresh_outputs(small))

    model.train()
    logits = model.forward_train(small, vocab)[-1][1]
    logits.sum().backward()
    assert model.clip_features.positional_embedding.grad is not None
    assert model.side_adapter.pos_embed.grad is not None

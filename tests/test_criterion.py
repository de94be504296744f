"""The training loss: Hungarian matching, the losses by hand, and a tiny model learning."""

from __future__ import annotations

import math

import pytest
import torch

from san_core.build import load_model
from san_core.criterion import SetCriterion, Target, dice_loss, point_sample, sigmoid_ce_loss, uncertain_point_coords


def _mask_logits(region: torch.Tensor) -> torch.Tensor:
    return torch.where(region, torch.tensor(10.0), torch.tensor(-10.0))


def test_matcher_finds_the_known_optimal_assignment():
    torch.manual_seed(0)
    size = 16
    left = torch.zeros(size, size, dtype=torch.bool)
    left[:, : size // 2] = True
    top_right = torch.zeros(size, size, dtype=torch.bool)
    top_right[: size // 2, size // 2 :] = True
    target = Target(labels=torch.tensor([1, 0]), masks=torch.stack([left, top_right]).float())
    # query 2 draws the left half as class 1, query 0 the top-right quadrant as class 0
    masks = torch.stack(
        [_mask_logits(top_right), _mask_logits(~left & ~top_right), _mask_logits(left), torch.full((size, size), -10.0)]
    )
    classes = torch.full((4, 3), -5.0)
    classes[0, 0] = classes[2, 1] = 5.0
    classes[1, 2] = classes[3, 2] = 5.0  # the others say "no object"
    criterion = SetCriterion(num_classes=2, num_points=256)
    rows, cols = criterion.match(classes, masks, target)
    assert rows.tolist() == [0, 2] and cols.tolist() == [1, 0]


def test_class_cost_breaks_a_tie_between_identical_masks():
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:6, 2:6] = True
    target = Target(labels=torch.tensor([1]), masks=region[None].float())
    masks = torch.stack([_mask_logits(region), _mask_logits(region)])
    classes = torch.tensor([[3.0, -3.0, 0.0], [-3.0, 3.0, 0.0]])  # only query 1 believes class 1
    rows, cols = SetCriterion(num_classes=2, num_points=64).match(classes, masks, target)
    assert rows.tolist() == [1] and cols.tolist() == [0]


def test_losses_equal_hand_computed_values():
    torch.manual_seed(0)
    masks = torch.randn(1, 2, 8, 8)
    classes = torch.tensor([[[2.0, 0.5, 0.1], [0.3, 0.2, 1.5]]])  # [1, Q=2, C+1], C=2
    target = Target(labels=torch.tensor([0]), masks=(masks[0, 0] > 0).float()[None])  # query 0 fits best
    losses = SetCriterion(num_classes=2, num_points=50)([(classes, masks)], [target])

    def nll(logits: list[float], k: int) -> float:
        return -(logits[k] - math.log(sum(math.exp(v) for v in logits)))

    # query 0 is matched to class 0; query 1 learns "no object" (index 2) with weight 0.1
    expected_ce = (1.0 * nll([2.0, 0.5, 0.1], 0) + 0.1 * nll([0.3, 0.2, 1.5], 2)) / (1.0 + 0.1)
    assert losses["loss_ce"].item() == pytest.approx(2.0 * expected_ce, rel=1e-5)

    # the point losses on two masks of three points each, normalised by 4 masks
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    sig = [[1 / (1 + math.exp(-v)) for v in row] for row in logits.tolist()]
    bce = [
        sum(-(y * math.log(p) + (1 - y) * math.log(1 - p)) for p, y in zip(ps, ys, strict=True)) / 3
        for ps, ys in zip(sig, labels.tolist(), strict=True)
    ]
    dice = [
        1 - (2 * sum(p * y for p, y in zip(ps, ys, strict=True)) + 1) / (sum(ps) + sum(ys) + 1)
        for ps, ys in zip(sig, labels.tolist(), strict=True)
    ]
    assert sigmoid_ce_loss(logits, labels, 4.0).item() == pytest.approx(sum(bce) / 4, rel=1e-6)
    assert dice_loss(logits, labels, 4.0).item() == pytest.approx(sum(dice) / 4, rel=1e-6)
    assert losses["loss"].item() == pytest.approx(
        losses["loss_ce"].item() + losses["loss_mask"].item() + losses["loss_dice"].item(), rel=1e-6
    )


def test_deep_supervision_blocks_get_suffixed_losses_and_empty_targets_work():
    masks = torch.randn(1, 3, 8, 8)
    classes = torch.randn(1, 3, 4)
    empty = Target(labels=torch.zeros(0, dtype=torch.int64), masks=torch.zeros(0, 8, 8))
    losses = SetCriterion(num_classes=3, num_points=16)([(classes, masks), (classes, masks)], [empty])
    assert set(losses) == {"loss_ce_0", "loss_mask_0", "loss_dice_0", "loss_ce", "loss_mask", "loss_dice", "loss"}
    assert losses["loss_mask"].item() == 0.0 and losses["loss_ce"].item() > 0


def test_point_sampling_prefers_uncertain_points():
    torch.manual_seed(0)
    logits = torch.full((1, 1, 32, 32), 8.0)
    logits[..., :, 16:] = 0.01  # the right half is uncertain
    coords = uncertain_point_coords(logits, num_points=200, oversample_ratio=3.0, importance_ratio=0.75)
    assert coords.shape == (1, 200, 2)
    assert (coords[0, :150, 0] >= 0.45).float().mean() > 0.95  # the importance-sampled ones
    values = point_sample(torch.arange(4.0).view(1, 1, 2, 2), torch.tensor([[[0.25, 0.25], [0.75, 0.75]]]))
    assert values.tolist() == [[0.0, 3.0]]  # pixel centres sample exactly


def test_a_tiny_model_learns_and_frozen_clip_stays_bitwise_unchanged(parity_dir):
    torch.manual_seed(0)
    tiny = parity_dir / "tiny_a"
    model = load_model(checkpoint=str(tiny / "checkpoint.pth"), model_config=str(tiny / "config.json")).model
    model.train()
    trainable = model.freeze_for_finetuning()
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    vocab = model.class_embeddings(["sky", "grass"])

    images, targets = [], []
    for flip in (False, True):
        top = torch.zeros(64, 64, dtype=torch.bool)
        top[:32] = True
        if flip:
            top = ~top
        image = torch.where(
            top, torch.tensor([[[90.0]], [[140.0]], [[230.0]]]), torch.tensor([[[40.0]], [[160.0]], [[50.0]]])
        )
        images.append(image)
        targets.append(Target(labels=torch.tensor([0, 1]), masks=torch.stack([top, ~top]).float()))
    criterion = SetCriterion(num_classes=2, num_points=256)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(40):
        losses = criterion(model.forward_train(images, vocab), targets)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses["loss"].item())
    assert sum(history[-5:]) / 5 < 0.6 * sum(history[:5]) / 5
    for name, before in frozen_before.items():
        assert torch.equal(before, dict(model.named_parameters())[name]), name

"""The training loss of SAN (the Mask2Former set criterion the published recipe uses).

Each ground-truth segment is matched to one query by the Hungarian algorithm on a cost of
class probability and mask agreement (sigmoid cross-entropy and dice on a shared set of random
points). Matched queries learn their class and mask; unmatched queries learn "no object", whose
cross-entropy weight is `no_object_weight`. Mask losses are computed on `num_points` points per
mask, most of them where the prediction is least certain. Every deep-supervision block gets the
same losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from scipy.optimize import linear_sum_assignment
from torch.nn import functional as F


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """maps [N, 1, H, W], coords [N, P, 2] as (x, y) in [0, 1] -> bilinear samples [N, P]."""
    grid = (2.0 * coords - 1.0)[:, :, None, :]  # grid_sample wants [-1, 1] and a 2-D grid
    return F.grid_sample(maps, grid, align_corners=False)[:, 0, :, 0]


def uncertain_point_coords(
    logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float
) -> torch.Tensor:
    """[N, P, 2] points per mask: of `oversample_ratio * P` random candidates keep the
    `importance_ratio * P` whose logits are closest to 0, and fill up with fresh random points."""
    count = logits.shape[0]
    candidates = torch.rand(count, int(num_points * oversample_ratio), 2, device=logits.device)
    uncertainty = -point_sample(logits, candidates).abs()
    num_uncertain = int(importance_ratio * num_points)
    keep = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, keep[..., None].expand(-1, -1, 2))
    random = torch.rand(count, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([chosen, random], dim=1)


def pairwise_sigmoid_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [Q, P], targets [T, P] -> mean binary cross-entropy of every pair [Q, T]."""
    positive = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    negative = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (positive @ targets.T + negative @ (1 - targets).T) / logits.shape[1]


def pairwise_dice(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits [Q, P], targets [T, P] -> dice loss of every pair [Q, T] (smoothed by 1)."""
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Matched pairs [M, P]: mean over points, summed over masks, divided by num_masks."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    probs = logits.sigmoid()
    loss = 1 - (2 * (probs * targets).sum(-1) + 1) / (probs.sum(-1) + targets.sum(-1) + 1)
    return loss.sum() / num_masks


@dataclass(frozen=True)
class Target:
    """One image's ground truth: class indices [T] and binary masks [T, H, W] at the input size."""

    labels: torch.Tensor
    masks: torch.Tensor


@dataclass(frozen=True)
class SetCriterion:
    """The published weights: class 2, mask 5, dice 5, no-object 0.1, 112x112 points."""

    num_classes: int
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 112 * 112
    oversample_ratio: float = 3.0
    importance_ratio: float = 0.75

    @torch.no_grad()
    def match(
        self, class_logits: torch.Tensor, mask_logits: torch.Tensor, target: Target
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Optimal (query indices, target indices) for one image; class_logits [Q, C+1],
        mask_logits [Q, h, w]."""
        if len(target.labels) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty
        cost_class = -class_logits.softmax(-1)[:, target.labels]
        points = torch.rand(1, self.num_points, 2, device=mask_logits.device)
        predicted = point_sample(mask_logits[:, None].float(), points.expand(len(mask_logits), -1, -1))
        wanted = point_sample(target.masks[:, None].float(), points.expand(len(target.masks), -1, -1))
        cost = (
            self.class_weight * cost_class
            + self.mask_weight * pairwise_sigmoid_ce(predicted, wanted)
            + self.dice_weight * pairwise_dice(predicted, wanted)
        )
        rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)

    def _num_masks(self, targets: list[Target], device: torch.device) -> float:
        count = torch.tensor([float(sum(len(t.labels) for t in targets))], device=device)
        if dist.is_available() and dist.is_initialized():  # the same normaliser on every worker
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return max(float(count.item()), 1.0)

    def block_losses(
        self, class_logits: torch.Tensor, mask_logits: torch.Tensor, targets: list[Target], num_masks: float
    ) -> dict[str, torch.Tensor]:
        """Unweighted losses of one supervised block: class_logits [B, Q, C+1], mask_logits [B, Q, h, w]."""
        matches = [self.match(c, m, t) for c, m, t in zip(class_logits, mask_logits, targets, strict=True)]
        device = class_logits.device
        target_classes = torch.full(class_logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        for b, (rows, cols) in enumerate(matches):
            target_classes[b, rows.to(device)] = targets[b].labels[cols.to(targets[b].labels.device)].to(device)
        class_weights = torch.ones(self.num_classes + 1, device=device)
        class_weights[-1] = self.no_object_weight
        loss_ce = F.cross_entropy(class_logits.float().transpose(1, 2), target_classes, class_weights)

        src = torch.cat([mask_logits[b, rows.to(device)] for b, (rows, _) in enumerate(matches)])
        tgt = torch.cat([targets[b].masks[cols].to(src) for b, (_, cols) in enumerate(matches)])
        if len(src) == 0:
            zero = mask_logits.sum() * 0.0
            return {"loss_ce": loss_ce, "loss_mask": zero, "loss_dice": zero}
        with torch.no_grad():
            points = uncertain_point_coords(
                src[:, None].float(), self.num_points, self.oversample_ratio, self.importance_ratio
            )
            point_labels = point_sample(tgt[:, None].float(), points)
        point_logits = point_sample(src[:, None].float(), points)
        return {
            "loss_ce": loss_ce,
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    def __call__(
        self, outputs: list[tuple[torch.Tensor, torch.Tensor]], targets: list[Target]
    ) -> dict[str, torch.Tensor]:
        """outputs: (class_logits, mask_logits) per supervised block, the final block last.

        Returns the weighted losses (the final block's as loss_ce/loss_mask/loss_dice, earlier
        blocks' with suffixes _0, _1, ...) and their sum as "loss".
        """
        num_masks = self._num_masks(targets, outputs[-1][0].device)
        weights = {"loss_ce": self.class_weight, "loss_mask": self.mask_weight, "loss_dice": self.dice_weight}
        losses: dict[str, torch.Tensor] = {}
        for index, (class_logits, mask_logits) in enumerate(outputs):
            suffix = "" if index == len(outputs) - 1 else f"_{index}"
            for name, value in self.block_losses(class_logits, mask_logits, targets, num_masks).items():
                losses[name + suffix] = weights[name] * value
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses

"""SAN: a frozen CLIP plus a side adapter network, composed from the small modules beside this file.

Data flow for a batch of images (all padded to one size; `video.py` has the clip version):

    image [B,3,H,W] --normalise, pad--> side adapter ------------> mask logits [B,Q,H/16,W/16]
        |                                   ^   |
        +--x clip_resolution--> CLIP blocks 1..k (features)      attention bias [B,heads,Q,H/16,W/16]
                                     |          v
                                     +--> recognition head (CLIP blocks k+1..) -> region embeddings [B,Q,D]
    region embeddings x classifier [C+1,D] -> class logits [B,Q,C+1]
    softmax(class logits)[:, :C] x sigmoid(mask logits) -> per-class score maps
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from schemas.model_config import SanModelConfig

from .clip_backbone import build_clip
from .clip_features import ClipFeatureExtractor, ClipFeatures
from .postprocess import (
    MAX_BATCH_PIXELS,
    LabelBatch,
    LabelTile,
    class_probabilities,
    label_batch,
    semantic_label_tiles,
    semantic_labels,
    semantic_scores,
)
from .precision import Bf16Weights, inference_autocast
from .recognition_head import RecognitionHead
from .side_adapter import SideAdapter
from .text_classifier import TextClassifier
from .video import ClipLabels, clip_labels, cluster_queries, frame_label_tiles, frame_scores


@dataclass
class SanOutputs:
    """Everything one padded batch computes (B images, Q queries, C classes, D embedding width)."""

    clip_features: ClipFeatures
    mask_logits: torch.Tensor  # [B, Q, h, w] side-adapter mask logits before resizing
    attn_biases: list[torch.Tensor]  # per bias layer [B, heads, Q, h, w] before downsampling
    region_embeddings: torch.Tensor  # [B, Q, D] L2-normalised
    class_logits: torch.Tensor  # [B, Q, C(+1)] (background last when used)
    padded_size: tuple[int, int]  # (H, W) of the padded batch
    input_sizes: list[tuple[int, int]]  # each image's own (H, W) inside the padding


@dataclass
class VideoOutputs:
    """Everything one clip computes (L frames, Q queries, K shared proposals, C classes)."""

    queries: torch.Tensor  # [L, Q, D_side] the side adapter's final query tokens, before clustering
    cluster_centers: torch.Tensor  # [K, D_side] the queries every frame shares
    mask_logits: torch.Tensor  # [L, K, h, w] per-frame mask logits of the shared proposals
    attn_biases: list[torch.Tensor]  # per bias layer [L, heads, K, h, w]
    class_logits: torch.Tensor  # [K, C(+1)] logit-scaled, averaged over the frames
    padded_size: tuple[int, int]  # (H, W) of the padded clip
    input_size: tuple[int, int]  # the frames' own (H, W) (the first frame's, as the reference takes it)


@dataclass
class VideoPrediction:
    outputs: VideoOutputs
    score_maps: torch.Tensor  # [L, C, H_out, W_out] per-frame class scores (the reference's sem_seg)
    clip: ClipLabels  # labels, one score each for the clip, masks in every frame


class SAN(nn.Module):
    def __init__(self, config: SanModelConfig) -> None:
        super().__init__()
        self.config = config
        clip = build_clip(config.clip)
        last = config.san.clip_feature_last_layer
        self.clip_features = ClipFeatureExtractor(clip.visual, last_layer=last)
        self.recognition_head = RecognitionHead(
            clip.visual, first_layer=last, downsample_method=config.san.rec_downsample_method
        )
        self.side_adapter = SideAdapter(config.side_adapter, clip_width=self.clip_features.width)
        self.text_classifier = TextClassifier(clip)
        self.register_buffer("pixel_mean", torch.empty(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.empty(3, 1, 1), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """Fill the buffers that are derived from the config, never read from a checkpoint."""
        san = self.config.san
        device = self.pixel_mean.device
        if device.type == "meta":
            return
        self.pixel_mean = torch.tensor(san.pixel_mean, device=device).view(-1, 1, 1)
        self.pixel_std = torch.tensor(san.pixel_std, device=device).view(-1, 1, 1)
        self.text_classifier.reset_attn_mask()

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def inference_precision(self, precision: str) -> contextlib.AbstractContextManager:
        """The context the networks run in for `precision` (fp32, bf16 or auto): under bf16,
        autocast with the matrix-product weights cast once and kept (`precision.Bf16Weights`)."""
        if getattr(self, "_bf16_weights", None) is None:
            # the image networks only: the text tower's layers are not run here
            self._bf16_weights = Bf16Weights([self.clip_features, self.side_adapter, self.recognition_head])
        return inference_autocast(precision, self.device, self._bf16_weights)

    # --- vocabulary -------------------------------------------------------------------------
    @torch.no_grad()
    def class_embeddings(
        self, names: Sequence[str | Sequence[str]], templates: Sequence[str] | None = None
    ) -> torch.Tensor:
        """[C, D] normalised text embeddings; each entry is a class name or a list of its synonyms."""
        prompt_sets = [[n] if isinstance(n, str) else list(n) for n in names]
        return self.text_classifier.embed_prompt_sets(prompt_sets, templates or self.config.templates)

    def text_tower_digest(self) -> str:
        """sha256 of the text tower's weights: equal digests give equal class embeddings."""
        if getattr(self, "_text_tower_digest", None) is None:
            h = hashlib.sha256()
            for name, tensor in sorted(self.text_classifier.text_tower_parameters().items()):
                h.update(name.encode())
                h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
            self._text_tower_digest = h.hexdigest()
        return self._text_tower_digest

    @torch.no_grad()
    def classifier(self, names: Sequence[str], templates: Sequence[str] | None = None) -> torch.Tensor:
        """The reference's logit-scaled classifier [C+1, D] for a vocabulary (background last)."""
        return self.text_classifier.classifier_weights(self.class_embeddings(names, templates))

    # --- images -----------------------------------------------------------------------------
    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        d = self.config.san.size_divisibility
        return (height + d - 1) // d * d, (width + d - 1) // d * d

    def preprocess(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """RGB images [3, H_i, W_i] in 0..255 (uint8 or float) -> normalised batch [B, 3, H, W],
        zero-padded at the bottom/right to the largest size rounded up to size_divisibility."""
        height, width = self.padded_size(max(int(i.shape[-2]) for i in images), max(int(i.shape[-1]) for i in images))
        batch = torch.zeros(len(images), 3, height, width, device=self.device, dtype=self.pixel_mean.dtype)
        for slot, image in zip(batch, images, strict=True):
            h, w = image.shape[-2:]
            # in place in the batch: the same subtraction and division as (image - mean) / std,
            # without two image-sized temporaries in the image's own (often channel-last) layout
            slot[:, :h, :w].copy_(image).sub_(self.pixel_mean).div_(self.pixel_std)
        return batch

    def forward(
        self, images: Sequence[torch.Tensor], class_embeddings: torch.Tensor, background: bool = True
    ) -> SanOutputs:
        """Run one padded batch exactly as the reference does (all images padded together).

        images: RGB [3, H_i, W_i], 0..255 (uint8 or float), already resized to the model's input size.
        class_embeddings: [C, D] from `class_embeddings()`; `background` adds the learned
        background column to the class logits (the reference always does).
        """
        batch = self.preprocess(images)
        scale = self.config.san.clip_resolution
        clip_input = F.interpolate(batch, scale_factor=scale, mode="bilinear", align_corners=False)
        clip_features = self.clip_features(clip_input)
        mask_logits_all, attn_biases_all = self.side_adapter(batch, clip_features.maps)
        mask_logits, attn_biases = mask_logits_all[-1], attn_biases_all[-1]
        last = self.config.san.clip_feature_last_layer
        regions = self.recognition_head(clip_features.cls_tokens[last], clip_features.maps[last], attn_biases)
        class_logits = self.text_classifier.class_logits(regions, class_embeddings, background)
        return SanOutputs(
            clip_features=clip_features,
            mask_logits=mask_logits,
            attn_biases=attn_biases,
            region_embeddings=regions,
            class_logits=class_logits,
            padded_size=(int(batch.shape[-2]), int(batch.shape[-1])),
            input_sizes=[(int(i.shape[-2]), int(i.shape[-1])) for i in images],
        )

    def forward_train(
        self, images: Sequence[torch.Tensor], class_embeddings: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(class logits [B, Q, C+1], mask logits [B, Q, h, w]) for every deep-supervision block
        of the side adapter, the output block last: what the training loss needs."""
        batch = self.preprocess(images)
        clip_input = F.interpolate(
            batch, scale_factor=self.config.san.clip_resolution, mode="bilinear", align_corners=False
        )
        clip_features = self.clip_features(clip_input)
        mask_logits_all, attn_biases_all = self.side_adapter(batch, clip_features.maps, all_supervised=True)
        last = self.config.san.clip_feature_last_layer
        outputs = []
        for mask_logits, attn_biases in zip(mask_logits_all, attn_biases_all, strict=True):
            regions = self.recognition_head(clip_features.cls_tokens[last], clip_features.maps[last], attn_biases)
            outputs.append((self.text_classifier.class_logits(regions, class_embeddings, background=True), mask_logits))
        return outputs

    def trainable_parameter_names(self) -> list[str]:
        """What fine-tuning trains, as the published recipe: the side adapter, CLIP's visual
        positional embedding and the background embedding. Everything else stays frozen."""
        return [
            name
            for name, _ in self.named_parameters()
            if name.startswith("side_adapter.")
            or name in ("clip_features.positional_embedding", "text_classifier.bg_embed")
        ]

    def freeze_for_finetuning(self) -> int:
        """Set requires_grad per `trainable_parameter_names`; returns the trainable count."""
        trainable = set(self.trainable_parameter_names())
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name in trainable)
        return sum(p.numel() for n, p in self.named_parameters() if n in trainable)

    def _grouped(self, images: Sequence[torch.Tensor]) -> list[list[int]]:
        """Indices of images grouped by padded size: padding never changes an image's result
        when each group runs as one batch (the reference evaluates one image at a time)."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            groups[self.padded_size(int(image.shape[-2]), int(image.shape[-1]))].append(index)
        return list(groups.values())

    def _by_padded_size(
        self, images: Sequence[torch.Tensor], class_embeddings: torch.Tensor, background: bool, precision: str
    ) -> Iterator[tuple[list[int], SanOutputs, torch.Tensor, torch.Tensor]]:
        """Per group of equal padded size, run as one batch under `precision`: the images'
        indices, the outputs, and the class and mask logits in float32 for post-processing."""
        for indices in self._grouped(images):
            with self.inference_precision(precision):
                out = self([images[i] for i in indices], class_embeddings, background)
            yield indices, out, out.class_logits.float(), out.mask_logits.float()

    def _per_image(
        self,
        images: Sequence[torch.Tensor],
        class_embeddings: torch.Tensor,
        output_sizes: Sequence[tuple[int, int]] | None,
        background: bool,
        postprocess: Callable[..., Any],
        precision: str = "fp32",
    ) -> list[Any]:
        """Run each group of equal padded size as one batch (under `precision`); post-process every
        image's outputs in float32."""
        sizes = _sizes(images, output_sizes)
        results: list[Any] = [None] * len(images)
        for indices, out, class_logits, mask_logits in self._by_padded_size(
            images, class_embeddings, background, precision
        ):
            for slot, i in enumerate(indices):
                results[i] = postprocess(
                    class_logits[slot], mask_logits[slot], out.padded_size, out.input_sizes[slot], sizes[i]
                )
        return results

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[torch.Tensor],
        class_embeddings: torch.Tensor,
        output_sizes: Sequence[tuple[int, int]] | None = None,
        background: bool = True,
        precision: str = "fp32",
    ) -> list[torch.Tensor]:
        """Per-image class score maps [C, H_out, W_out] (the reference's `sem_seg`), each equal to
        running that image alone. output_sizes default to the input sizes; precision is fp32,
        bf16 (autocast) or auto (`precision.py`)."""
        scores = partial(semantic_scores, background=background)
        return self._per_image(images, class_embeddings, output_sizes, background, scores, precision)

    @torch.no_grad()
    def predict_labels(
        self,
        images: Sequence[torch.Tensor],
        class_embeddings: torch.Tensor,
        output_sizes: Sequence[tuple[int, int]] | None = None,
        background: bool = True,
        max_chunk_elements: int | None = None,
        precision: str = "fp32",
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image (labels [H_out, W_out] as class indices, their scores): the argmax of
        `predict`'s score maps, computed in row chunks so no [C, H, W] map is ever materialised."""
        labels = partial(semantic_labels, background=background, max_chunk_elements=max_chunk_elements)
        return self._per_image(images, class_embeddings, output_sizes, background, labels, precision)

    @torch.no_grad()
    def predict_label_tiles(
        self,
        images: Sequence[torch.Tensor],
        class_embeddings: torch.Tensor,
        output_sizes: Sequence[tuple[int, int]] | None = None,
        background: bool = True,
        max_chunk_elements: int | None = None,
        precision: str = "fp32",
    ) -> list[Iterator[LabelTile]]:
        """Per image, `predict_labels`' result as an iterator of tiles: a caller that consumes
        them as they come (encoding, counting) labels any output size in bounded memory."""
        tiles = partial(semantic_label_tiles, background=background, max_chunk_elements=max_chunk_elements)
        return self._per_image(images, class_embeddings, output_sizes, background, tiles, precision)

    @torch.no_grad()
    def predict_label_batches(
        self,
        images: Sequence[torch.Tensor],
        class_embeddings: torch.Tensor,
        output_sizes: Sequence[tuple[int, int]] | None = None,
        background: bool = True,
        precision: str = "fp32",
        max_batch_pixels: int = MAX_BATCH_PIXELS,
    ) -> list[tuple[list[int], LabelBatch]]:
        """`predict_labels` for a GPU: the images that share their padded, input and output sizes
        are labelled together (`label_batch`), at most `max_batch_pixels` output pixels a
        call. Returns (image indices, their label maps) pairs that cover every image once."""
        sizes = _sizes(images, output_sizes)
        found = []
        for indices, out, class_logits, mask_logits in self._by_padded_size(
            images, class_embeddings, background, precision
        ):
            alike: dict[tuple[tuple[int, int], tuple[int, int]], list[int]] = defaultdict(list)
            for slot, i in enumerate(indices):  # slots of this batch by (input size, output size)
                alike[(out.input_sizes[slot], sizes[i])].append(slot)
            for (input_size, (height, width)), slots in alike.items():
                per_call = max(1, max_batch_pixels // max(1, height * width))
                for start in range(0, len(slots), per_call):
                    chosen = slots[start : start + per_call]
                    labels = label_batch(
                        class_logits[chosen],
                        mask_logits[chosen],
                        out.padded_size,
                        input_size,
                        (height, width),
                        background,
                    )
                    found.append(([indices[slot] for slot in chosen], labels))
        return found

    # --- video (the journal version) -------------------------------------------------------------
    def forward_video(
        self,
        frames: Sequence[torch.Tensor],
        class_embeddings: torch.Tensor,
        background: bool = True,
        cluster_centers: torch.Tensor | None = None,
    ) -> VideoOutputs:
        """Run one clip as the reference's video inference does (see `video.py`).

        frames: RGB [3, H, W], 0..255 (uint8 or float), already resized; they are padded and run as one
        batch. A clip's frames share one size; if they do not, every frame is cropped to the first
        frame's size after the padding, as the reference does. cluster_centers [K, D_side], if
        given, replace the k-means result (to check the stages after the clustering on their own).
        """
        batch = self.preprocess(frames)
        clip_input = F.interpolate(
            batch, scale_factor=self.config.san.clip_resolution, mode="bilinear", align_corners=False
        )
        clip_features = self.clip_features(clip_input)
        side = self.side_adapter.forward_features(batch, clip_features.maps)[-1]
        if cluster_centers is None:
            kmeans = self.config.video_settings.kmeans
            cluster_centers = cluster_queries(side.query, self.config.num_clusters, kmeans.random_state, kmeans.n_init)
        shared = cluster_centers.to(side.query)[None].expand(len(frames), -1, -1)
        mask_logits, attn_biases = self.side_adapter.mask_decoder(shared, side.pixels)
        last = self.config.san.clip_feature_last_layer
        regions = self.recognition_head(clip_features.cls_tokens[last], clip_features.maps[last], attn_biases)
        class_logits = self.text_classifier.class_logits(regions, class_embeddings, background)
        return VideoOutputs(
            queries=side.query,
            cluster_centers=cluster_centers,
            mask_logits=mask_logits,
            attn_biases=attn_biases,
            class_logits=class_logits.mean(dim=0),
            padded_size=(int(batch.shape[-2]), int(batch.shape[-1])),
            input_size=(int(frames[0].shape[-2]), int(frames[0].shape[-1])),
        )

    @torch.no_grad()
    def predict_video(
        self,
        frames: Sequence[torch.Tensor],
        class_embeddings: torch.Tensor,
        output_size: tuple[int, int] | None = None,
        background: bool = True,
        cluster_centers: torch.Tensor | None = None,
    ) -> VideoPrediction:
        """Per-frame score maps [L, C, H_out, W_out] of one clip and its labels, scores and masks
        (the reference's `inference_video`). output_size defaults to the frames' size."""
        out = self.forward_video(frames, class_embeddings, background, cluster_centers)
        probs = class_probabilities(out.class_logits, background)
        size = output_size or out.input_size
        score_maps = torch.stack(
            [frame_scores(probs, logits, out.padded_size, out.input_size, size) for logits in out.mask_logits]
        )
        return VideoPrediction(out, score_maps, clip_labels(score_maps))

    @torch.no_grad()
    def predict_video_label_tiles(
        self,
        frames: Sequence[torch.Tensor],
        class_embeddings: torch.Tensor,
        output_size: tuple[int, int] | None = None,
        background: bool = True,
        max_chunk_elements: int | None = None,
        precision: str = "fp32",
    ) -> tuple[VideoOutputs, list[Iterator[LabelTile]]]:
        """One clip's outputs and, per frame, the argmax of `predict_video`'s score maps as an
        iterator of tiles (bounded memory at any output size). Under bf16 the networks run in
        autocast; the clustering, class averaging and label maps in float32."""
        with self.inference_precision(precision):
            out = self.forward_video(frames, class_embeddings, background)
        out.class_logits, out.mask_logits = out.class_logits.float(), out.mask_logits.float()
        probs = class_probabilities(out.class_logits, background)
        size = output_size or out.input_size
        tiles = [
            frame_label_tiles(probs, logits, out.padded_size, out.input_size, size, max_chunk_elements)
            for logits in out.mask_logits
        ]
        return out, tiles


def _sizes(images: Sequence[torch.Tensor], output_sizes: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    if output_sizes is None:
        return [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
    if len(output_sizes) != len(images):
        raise ValueError(f"{len(output_sizes)} output sizes for {len(images)} images")
    return [(int(h), int(w)) for h, w in output_sizes]

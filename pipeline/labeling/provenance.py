"""What makes a run's labels, as each result file's metadata records it: a later run into the same
folder must match it (see `pipeline.store`)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from schemas.jobs import LabelJobConfig
from schemas.model_config import SanModelConfig
from schemas.output import Provenance, TaxonomyRef
from schemas.taxonomy import Taxonomy

from ..weights import WeightsSpec


def make_provenance(
    config: LabelJobConfig,
    taxonomy: Taxonomy,
    weights: WeightsSpec,
    checkpoint_digest: str | None,
    model_config: SanModelConfig,
) -> Provenance:
    return Provenance(
        project_version=project_version(),
        model_id=weights.model_id,
        weights_digest=checkpoint_digest,
        model_config_digest=model_config.digest(),
        taxonomy=TaxonomyRef(name=taxonomy.name, version=str(taxonomy.version), digest=taxonomy.digest()),
        short_side=config.short_side,
        max_long_side=config.max_long_side,
        precision=config.precision,
        video_sampling=video_sampling_tag(config),
    )


def video_sampling_tag(config: LabelJobConfig) -> str:
    """How videos are sampled, as provenance records it (`fps=2,clip=8`, `stride=15,clip=8`)."""
    by = f"stride={config.frame_stride}" if config.frame_stride is not None else f"fps={config.video_fps:g}"
    return f"{by},clip={config.clip_length}"


def project_version() -> str:
    try:
        return version("san-labeler")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown"

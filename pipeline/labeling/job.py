"""The labeling job, top to bottom: inputs -> load (CPU tasks) -> SAN actors -> Parquet.

Everything that can make the whole job fail (unreadable input, unwritable output, unavailable
weights) is checked before the stream starts. Per-image failures become error rows. Re-running
into the same output labels only images that have no row yet; `_manifest.json`, written last,
marks a finished run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from san_core.precision import resolve_precision
from schemas.jobs import ACTORS_PER_GPU, CPU_BATCH_SIZE, GPU_BATCH_SIZE, LabelJobConfig
from schemas.model_config import SanModelConfig
from schemas.output import SCHEMA_VERSION, Provenance, TaxonomyRef, label_row_schema
from schemas.taxonomy import Taxonomy

from ..images import decode_rgb, load_images
from ..inputs import check_output_writable, check_paths_for_cluster, stream_inputs
from ..label_maps import decode_label_map
from ..results import (
    MANIFEST_NAME,
    PREVIEW_DIR,
    ProvenanceError,
    is_own_result,
    is_video_result,
    result_file_stamps,
    result_files,
)
from ..storage import pyarrow_filesystem, read_parquet
from ..video.decode import VIDEO_EXTENSIONS
from ..video.labeling import SanVideoLabeler, VideoSampling
from ..video.preview import PREVIEW_FRAMES, render_video_preview
from ..vocabulary import DEFAULT_CACHE_DIR, VocabularyTable, load_or_build_vocabulary
from ..weights import SMOKE_BANNER, SharedWeights, WeightsSpec, resolve_weights
from .encode import encode_rows
from .file_names import ResultFileNames
from .output_state import OutputState, drop_superseded, index_new_files, scan_output
from .planning import AntiJoin, Decision
from .preview import render_overlay
from .progress import ProgressCounter, ProgressReporter, peak_rss_mib
from .row_index import INDEX_DIR, index_path
from .stages import SanLabeler

log = logging.getLogger(__name__)


# Images one read task loads: on a 16-CPU GPU node, 2,400 images in blocks of 256 (the files'
# size) were 10 read tasks, which decoded at 185 images/s while the GPU waited.
LOAD_BLOCK_IMAGES = 32


@dataclass
class RunSummary:
    run_id: str
    inputs: int
    labeled: int  # rows written by this run without error
    failed: int  # error rows written by this run
    skipped: int  # inputs that already had a row from an earlier run
    wall_time_s: float
    stream_time_s: float  # from the stream's start to its last Parquet file
    manifest: dict[str, Any] = field(default_factory=dict)
    stream_stats: str = ""  # Ray Data's account of the image stream, stage by stage

    @property
    def error_ratio(self) -> float:
        processed = self.labeled + self.failed
        return self.failed / processed if processed else 0.0


def _output_fs(config: LabelJobConfig) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(config.output, **config.storage_options)


def check_provenance(state: OutputState, current: Provenance, output: str) -> None:
    """Raise ProvenanceError if any earlier result was made with something that changes labels."""
    for path, recorded in state.provenances.items():
        if recorded is None:
            log.warning("%s records no provenance (an earlier release wrote it); its rows are kept", path)
            continue
        if recorded.schema_version != current.schema_version:
            raise ProvenanceError(
                f"{output} holds rows of output schema {recorded.schema_version} ({path}); this release writes "
                f"schema {current.schema_version}, and a plain reader of a folder holding both would see two "
                "shapes. Label into a new --output, or pass --overwrite to replace the earlier labels."
            )
        differences = current.differences(recorded)
        if differences:
            raise ProvenanceError(
                f"{output} holds labels made differently ({path}):\n  "
                + "\n  ".join(differences)
                + "\nmixing them would give one folder two meanings. Label into a new --output, or pass "
                "--overwrite to replace the earlier labels."
            )


def _clear_output(fs: fsspec.AbstractFileSystem, root: str) -> None:
    for path in filter(is_own_result, result_files(fs, root)):  # nobody else's files
        fs.rm(path)
    for name in (MANIFEST_NAME, PREVIEW_DIR, INDEX_DIR):
        target = f"{root.rstrip('/')}/{name}"
        if fs.exists(target):
            fs.rm(target, recursive=True)


def _torch_threads_per_actor(config: LabelJobConfig, actors: int) -> int:
    if config.torch_threads:
        return config.torch_threads
    import ray

    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    nodes = max(1, len([n for n in ray.nodes() if n.get("Alive")]))
    return max(1, cpus // nodes // actors)


def write_previews(
    config: LabelJobConfig, taxonomy: Taxonomy, files: list[str], banner: str | None = None
) -> list[str]:
    """Overlay previews under OUTPUT/_previews/ for the first `config.preview` labeled inputs: a
    PNG per image, an animated WebP of its first labeled frames per video; each with `banner`
    across its top if given (smoke-test previews must not pass for real labels)."""
    fs, root = _output_fs(config)
    folder = f"{root.rstrip('/')}/{PREVIEW_DIR}"
    if fs.exists(folder):  # this run's previews replace the last run's, none left over
        fs.rm(folder, recursive=True)
    written: list[str] = []
    columns = ["image_uri", "video_uri", "frame_index", "label_map_png", "error"]
    for path in files:
        with fs.open(path, "rb") as f:
            table = read_parquet(f, columns=columns)
        videos: dict[str, dict[int, bytes]] = {}
        for row in table.to_pylist():
            if row["error"] is not None:
                continue
            if row["video_uri"] is not None:
                frames = videos.setdefault(row["video_uri"], {})
                if len(frames) < PREVIEW_FRAMES:
                    frames[row["frame_index"]] = row["label_map_png"]
                continue
            if len(written) >= config.preview:
                return written
            with fsspec.open(row["image_uri"], "rb", **config.storage_options) as f:
                rgb = decode_rgb(f.read(), config.max_pixels, config.max_image_mib)
            overlay = render_overlay(rgb, decode_label_map(row["label_map_png"]), taxonomy, banner=banner)
            written.append(_write_preview(fs, root, len(written), row["image_uri"], "png", overlay))
        for video_uri, label_maps in videos.items():
            if len(written) >= config.preview:
                return written
            try:
                preview = render_video_preview(
                    video_uri, label_maps, taxonomy, config.video_fps, config.storage_options, banner
                )
            except Exception as e:  # a preview is a courtesy: the labels are written
                log.warning("no preview of %s: %s", video_uri, e)
                continue
            written.append(_write_preview(fs, root, len(written), video_uri, "webp", preview))
    return written


def _write_preview(fs: fsspec.AbstractFileSystem, root: str, number: int, uri: str, extension: str, data: bytes) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    target = f"{root.rstrip('/')}/{PREVIEW_DIR}/{number:04d}_{name}.{extension}"
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe(target, data)
    return target


@dataclass
class JobPlan:
    """What a run will do, decided before any work (and before Ray starts)."""

    config: LabelJobConfig
    taxonomy: Taxonomy
    weights: WeightsSpec
    input_count: int  # distinct input images
    todo: pa.StringArray  # the images this run labels
    files_before: list[str]  # the output's own result files when the stream starts
    vocabulary: VocabularyTable
    provenance: Provenance  # what makes these labels, checkpoint digest included
    started: float
    run_id: str
    shared_weights: SharedWeights  # put in the object store once; no actor reads the checkpoint
    retried: dict[str, pa.Array] = field(default_factory=dict)  # earlier file -> error rows this run re-attempts

    @property
    def class_names(self) -> dict[int, str]:
        return {c.id: c.name for c in self.taxonomy.classes}

    @property
    def retried_count(self) -> int:
        return sum(len(uris) for uris in self.retried.values())


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


def video_sampling(config: LabelJobConfig) -> VideoSampling:
    return VideoSampling(
        clip_length=config.clip_length,
        fps=config.video_fps,
        stride=config.frame_stride,
        short_side=config.short_side,
        max_long_side=config.max_long_side,
        max_pixels=config.max_pixels,
        io_attempts=config.io_attempts,
    )


def project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("san-labeler")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown"


def plan_label_job(config: LabelJobConfig, taxonomy: Taxonomy, smoke_if_no_weights: bool = False) -> JobPlan:
    """Check input, output and weights (raising InputError / WeightsError) and find the images
    that still need labels. Nothing is labeled here."""
    started = time.time()
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="san-plan-") as scratch:
        join = AntiJoin(scratch)
        input_batches, in_input_order = stream_inputs(config.input, config.storage_options)
        for batch in input_batches:
            join.add_inputs(batch)
        check_output_writable(config.output, config.storage_options)
        weights = resolve_weights(config.weights, config.storage_options, smoke_if_no_weights)

        # The vocabulary table is built (or read from cache) here, once; loading the weights in the
        # driver also proves the checkpoint fits the model before any actor starts.
        driver_model, checkpoint_digest = weights.load_checked("cpu")
        cache = config.vocab_cache or DEFAULT_CACHE_DIR
        vocabulary = load_or_build_vocabulary(taxonomy, driver_model, cache, config.storage_options)
        provenance = make_provenance(config, taxonomy, weights, checkpoint_digest, driver_model.config)
        shared_weights = SharedWeights.of(driver_model)  # the actors build theirs from this copy
        del driver_model

        fs, root = _output_fs(config)
        if config.overwrite:
            _clear_output(fs, root)
        state = scan_output(fs, root, join, scratch)
        check_provenance(state, provenance, config.output)
        _tidy_output(fs, root, state, run_id)  # only now, with everything checked, change the output
        decision = join.decide(state.file_rank(), config.retry_errors, sort_by_uri=not in_input_order)
    retried = _drop_superseded_rows(fs, state, decision, run_id)
    fs.invalidate_cache()
    files_before = [p for p in result_files(fs, root) if is_own_result(p)]
    todo = decision.todo
    again = f" ({decision.retried_count:,} of them error rows tried again)" if decision.retried_count else ""
    already = decision.inputs - len(todo)
    log.info(f"{decision.inputs:,} inputs: {already:,} already labeled, {len(todo):,} to label{again}")
    return JobPlan(
        config,
        taxonomy,
        weights,
        decision.inputs,
        todo,
        files_before,
        vocabulary,
        provenance,
        started,
        run_id,
        shared_weights,
        retried,
    )


def _tidy_output(fs: fsspec.AbstractFileSystem, root: str, state: OutputState, run_id: str) -> None:
    """Remove what a killed run left half-written and what indexes nothing, mark the output
    unfinished, and index the result files no index covered (so the next plan need not read them)."""
    for path in state.incomplete:
        log.warning("removing %s, left incomplete by an interrupted run", path)
        fs.rm(path)
    for path in state.damaged_indexes + state.stale_indexes:
        fs.rm(path)  # a row index cut short, or one whose files are all gone: it covers nothing
    if fs.exists(f"{root.rstrip('/')}/{MANIFEST_NAME}"):
        fs.rm(f"{root.rstrip('/')}/{MANIFEST_NAME}")  # this run is not finished until it writes one
    if state.unindexed is not None and state.unindexed.files:
        state.unindexed.write(fs, root, index_path(root, f"{run_id}-found"))


def _drop_superseded_rows(
    fs: fsspec.AbstractFileSystem, state: OutputState, decision: Decision, run_id: str
) -> dict[str, pa.Array]:
    """Rewrite the files whose rows a later row superseded (a run killed while it tidied up);
    returns the error rows this run re-attempts by the file that now holds them."""
    retried = {state.paths[number]: uris for number, uris in decision.retried.items()}
    if decision.superseded:
        superseded = {state.paths[number]: uris for number, uris in decision.superseded.items()}
        for path, copy in drop_superseded(fs, superseded, run_id).items():
            if path in retried:  # the error rows to replace moved with the rest of the file
                uris = retried.pop(path)
                if copy is not None:
                    retried[copy] = uris
    return retried


def cluster_gpus() -> tuple[float, float]:
    """(GPUs up now, the most the cluster can have): the second from the autoscaler's node types in
    the GCS (the record Ray Train reads for the same question), or the first where there is no
    autoscaler (a local or fixed cluster)."""
    import ray

    up = float(ray.cluster_resources().get("GPU", 0))
    try:
        from ray._private.state import state

        most = state.get_max_resources_from_cluster_config() or {}
    except Exception as e:  # no autoscaler record
        log.debug("no autoscaler configuration to read: %s", e)
        most = {}
    return up, max(up, float(most.get("GPU", 0)))


def gpus_per_actor(requested: float | None) -> float:
    """`--gpus-per-actor` if given; else 1/ACTORS_PER_GPU when the cluster has GPUs or can get
    them: GPUs up now, or node types with GPUs in the autoscaler's configuration. So on an
    autoscaling cluster whose GPU nodes are still down, the actors ask for GPUs and the autoscaler
    brings those nodes up."""
    if requested is not None:
        return requested
    up, most = cluster_gpus()
    if not up and most:
        log.info(f"no GPU is up yet, but the cluster's node types offer {most:g}: the actors ask for them")
    return 1.0 / ACTORS_PER_GPU if most else 0.0


@dataclass(frozen=True)
class ActorLayout:
    """How the image stream's actors are laid out, the flags' defaults resolved on the cluster."""

    gpus: float  # per actor
    concurrency: tuple[int, int]  # actors: min, max
    batch_size: int  # images per model call

    def record(self) -> dict[str, Any]:
        return {"gpus_per_actor": self.gpus, "concurrency": list(self.concurrency), "batch_size": self.batch_size}


def actor_layout(config: LabelJobConfig) -> ActorLayout:
    """The flags where given; else, with GPUs, ACTORS_PER_GPU actors per GPU up (growing to as many
    as the autoscaler's GPUs allow) at GPU_BATCH_SIZE, and without, one actor at CPU_BATCH_SIZE."""
    gpus = gpus_per_actor(config.gpus_per_actor)
    concurrency = config.concurrency
    if concurrency is None:
        up, most = cluster_gpus() if gpus > 0 else (0.0, 0.0)
        concurrency = (max(1, int(up / gpus + 1e-6)), max(1, int(most / gpus + 1e-6))) if gpus > 0 else (1, 1)
    batch_size = config.batch_size or (GPU_BATCH_SIZE if gpus > 0 else CPU_BATCH_SIZE)
    return ActorLayout(gpus, concurrency, batch_size)


def cluster_gpu_types(resources: Mapping[str, float]) -> set[str]:
    """The GPU names in a Ray cluster's resources (`accelerator_type:T4` -> T4), which Ray adds
    for the cards it detects on each node."""
    prefix = "accelerator_type:"
    return {name.removeprefix(prefix) for name, amount in resources.items() if name.startswith(prefix) and amount}


def _actor_pool(layout: ActorLayout) -> dict[str, Any]:
    return {"compute": ray_actor_pool(layout.concurrency), "num_gpus": layout.gpus, "num_cpus": 1}


def ray_actor_pool(concurrency: tuple[int, int]) -> Any:
    import ray

    return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])


def split_videos(todo: pa.StringArray) -> tuple[pa.StringArray, pa.StringArray]:
    """The inputs to label as images, and those to label as videos (by extension)."""
    pattern = r"\.(" + "|".join(e.lstrip(".") for e in VIDEO_EXTENSIONS) + r")(\?.*)?$"
    is_video = pc.match_substring_regex(todo, pattern, ignore_case=True)
    return todo.filter(pc.invert(is_video)), todo.filter(is_video)


def label_image_stream(
    config: LabelJobConfig,
    todo: pa.StringArray,
    actor_args: dict[str, Any],
    layout: ActorLayout,
    fs: fsspec.AbstractFileSystem,
    root: str,
    plan: JobPlan,
) -> str:
    """URIs -> read, decode, resize (CPU tasks) -> label maps (SAN actors, device work only) ->
    PNGs, segments, rows (CPU tasks) -> Parquet, in files of --rows-per-file. Actors on CPUs
    encode their own rows. Returns Ray Data's stats of the stream, stage by stage."""
    import ray

    # small read blocks, so that a few thousand images keep every CPU decoding; the write puts
    # them together again into files of --rows-per-file (slices share the plan's buffer)
    step = min(config.rows_per_file, LOAD_BLOCK_IMAGES)
    images = pa.table({"image_uri": todo})
    dataset = ray.data.from_arrow([images.slice(start, step) for start in range(0, len(todo), step)])
    dataset = dataset.map_batches(
        load_images,
        fn_kwargs={
            "short_side": config.short_side,
            "max_long_side": config.max_long_side,
            "max_pixels": config.max_pixels,
            "max_image_mib": config.max_image_mib,
            "storage_options": config.storage_options,
            "io_attempts": config.io_attempts,
        },
        batch_size=layout.batch_size,
        # decoding is light next to inference; a fractional CPU lets it overlap the actors
        num_cpus=0.5,
    )
    encoding = {"class_names": plan.class_names, "provenance": plan.provenance, "run_id": plan.run_id}
    on_gpus = layout.gpus > 0
    dataset = dataset.map_batches(
        SanLabeler,
        fn_constructor_kwargs={**actor_args, "encode": None if on_gpus else encoding},
        batch_size=layout.batch_size,
        batch_format="numpy",
        **_actor_pool(layout),
    )
    if on_gpus:  # the GPU's actors hand raw label maps to CPU tasks that encode them
        dataset = dataset.map_batches(
            encode_rows,
            fn_kwargs=encoding,
            batch_size=None,  # each actor's answer as it came
            batch_format="pyarrow",
            num_cpus=0.5,  # as the write after it, with which Ray Data fuses it into one task
        )
    dataset.write_parquet(
        root,
        filesystem=pyarrow_filesystem(fs),
        schema=label_row_schema(plan.provenance, plan.run_id),
        filename_provider=ResultFileNames(),
        min_rows_per_file=config.rows_per_file,
        ray_remote_args={"num_cpus": 0.5},
    )
    return dataset.stats()


def label_video_stream(
    config: LabelJobConfig, todo: pa.StringArray, shared: dict[str, Any], actors: dict[str, Any]
) -> set[str]:
    """Video URIs -> SAN video actors, one video per call: each decodes its video a clip ahead of
    the model and writes the video's rows to a result file of its own. Returns the files of the
    calls that finished (an actor killed mid-video leaves a file that is not among them)."""
    import ray

    videos = ray.data.from_arrow([pa.table({"video_uri": todo.slice(i, 1)}) for i in range(len(todo))])
    labeled = videos.map_batches(
        SanVideoLabeler,
        fn_constructor_kwargs={
            **shared,
            "output": config.output,
            "storage_options": config.storage_options,
            "sampling": video_sampling(config),
        },
        batch_size=1,
        batch_format="numpy",
        **actors,
    )
    finished = set()
    for batch in labeled.iter_batches(batch_size=None, batch_format="numpy"):
        for uri, path, rows, failed in zip(
            batch["video_uri"], batch["result_file"], batch["rows"], batch["failed"], strict=True
        ):
            log.info(f"{uri}: {rows} rows ({failed} errors)")
            finished.add(str(path))
    return finished


def run_label_job(plan: JobPlan) -> RunSummary:
    """Label the plan's images on the connected Ray cluster (none is used when there are none);
    returns what this run did."""
    import ray

    config, taxonomy, weights, todo = plan.config, plan.taxonomy, plan.weights, plan.todo
    table = plan.vocabulary
    fs, root = _output_fs(config)

    # The streams: images, then videos, each through a pool of SAN actors into Parquet.
    stream_start = time.time()
    video_files: set[str] = set()  # the files of the videos labeled to the end
    stream_stats = ""
    if len(todo):
        layout = actor_layout(config)
        # auto: as the actors' hardware allows (the cluster's GPU names; the driver's CPU flags
        # stand for the workers')
        gpu_types = cluster_gpu_types(ray.cluster_resources())
        precision = resolve_precision(config.precision, "cuda" if layout.gpus > 0 else "cpu", gpu_types)
        progress = ray.remote(num_cpus=0)(ProgressCounter).remote()
        actor_args = {  # what every labeling actor, of images or of videos, is built from
            "weights_ref": [ray.put(plan.shared_weights)],
            "vocabulary_ref": [ray.put(table)],
            "provenance": plan.provenance,
            "use_gpu": layout.gpus > 0,
            "precision": precision,
            "torch_threads": _torch_threads_per_actor(config, layout.concurrency[1]),
            "progress": progress,
            "uncertainty_map": config.uncertainty_map,
        }
        images, videos = split_videos(todo)
        with ProgressReporter(progress, len(todo), config.progress_every):
            if len(images):
                stream_stats = label_image_stream(config, images, actor_args, layout, fs, root, plan)
                log.debug("the image stream, stage by stage (Ray Data):\n%s", stream_stats)
            if len(videos):  # after the images, so that one pool of actors holds models at a time
                video_args = {**actor_args, "class_names": plan.class_names, "run_id": plan.run_id}
                video_files = label_video_stream(config, videos, video_args, _actor_pool(layout))
    else:
        precision, layout = None, None  # nothing labeled
    stream_time = time.time() - stream_start
    actor_peak = ray.get(progress.peak_memory.remote()) if len(todo) else None
    timing = {"startup_s": None, "steady_images_per_s": None}
    if len(todo):
        timing = ray.get(progress.timing.remote(stream_start))

    # Account, index, preview, and mark the run finished. The listing cached while planning is stale now.
    fs.invalidate_cache()
    before = set(plan.files_before)
    new_files = {p: stamp for p, stamp in result_file_stamps(fs, root).items() if is_own_result(p) and p not in before}
    for path in [p for p in new_files if is_video_result(p) and p not in video_files]:
        # an actor killed mid-video: Ray Data labeled that video again into another file
        log.warning("removing %s, left by a labeling actor that did not finish its video", path)
        fs.rm(path)
        del new_files[path]
    files_after = sorted([*plan.files_before, *new_files])
    with tempfile.TemporaryDirectory(prefix="san-index-") as scratch:
        new_rows = index_new_files(fs, root, new_files, plan.run_id, scratch, plan.retried)
    labeled, failed = new_rows.labeled, new_rows.failed
    # Rows this run replaced (--retry-errors) are superseded: gone before the run counts as done.
    if new_rows.replaced:
        drop_superseded(fs, new_rows.replaced, plan.run_id)
        log.info(f"{sum(len(u) for u in new_rows.replaced.values())} earlier rows replaced by this run's")
        fs.invalidate_cache()
        files_after = [p for p in result_files(fs, root) if is_own_result(p)]
    banner = SMOKE_BANNER if weights.random else None
    previews = write_previews(config, taxonomy, files_after, banner) if config.preview else []
    wall = time.time() - plan.started
    skipped = plan.input_count - len(todo)
    summary = RunSummary(plan.run_id, plan.input_count, labeled, failed, skipped, wall, stream_time)
    summary.stream_stats = stream_stats
    manifest = {
        "run_id": plan.run_id,
        "schema_version": SCHEMA_VERSION,
        "provenance": plan.provenance.model_dump(mode="json"),
        "config": config.for_record(),
        "model_id": weights.model_id,
        "weights": "random (smoke test)" if weights.random else "published" if config.weights.model else "checkpoint",
        "labels_meaningful": not weights.random,
        "precision": {"asked": config.precision, "used": precision},
        "actors": layout.record() if layout else None,  # the defaults as resolved on the cluster
        "digests": {
            "checkpoint": plan.provenance.weights_digest,
            "taxonomy": plan.provenance.taxonomy.digest,
            "vocabulary": table.digest,
        },
        "counts": {"inputs": plan.input_count, "labeled": labeled, "failed": failed, "skipped": summary.skipped},
        "previews": previews,
        "started_at": datetime.fromtimestamp(plan.started, timezone.utc).isoformat(),
        "wall_time_s": round(wall, 3),
        "stream_time_s": round(stream_time, 3),
        "images_per_s": round((labeled + failed) / wall, 3) if wall > 0 else None,  # start-up included
        **timing,  # startup_s: stream start to the first batch done; steady_images_per_s: after that
        "error_ratio": round(summary.error_ratio, 4),
        "peak_memory_mib": {
            "driver": round(peak_rss_mib(), 1),
            "labeling_actor": round(actor_peak, 1) if actor_peak else None,  # the largest of any actor
        },
        "status": "ok" if summary.error_ratio <= config.max_error_ratio else "error ratio exceeded",
    }
    fs.pipe(f"{root.rstrip('/')}/{MANIFEST_NAME}", json.dumps(manifest, indent=2).encode())
    summary.manifest = manifest
    return summary


def label(
    config: LabelJobConfig,
    taxonomy: Taxonomy,
    smoke_if_no_weights: bool = False,
    log_level: str = "INFO",
    ray_dashboard: bool = False,
) -> RunSummary:
    """The whole job: plan (raising InputError / WeightsError before Ray starts), then label on
    the Ray this process already runs, else the cluster it joins or starts (see `ray_for_job`;
    `ray_dashboard` gives a Ray it starts the dashboard). A run with nothing to label writes its
    manifest without starting or joining any Ray."""
    import ray

    from ..logs import ray_for_job

    plan = plan_label_job(config, taxonomy, smoke_if_no_weights)
    if not len(plan.todo):  # everything is labeled already (a nightly run without new input): no Ray
        return run_label_job(plan)
    with ray_for_job(log_level, ray_dashboard):
        paths = {
            "--input": config.input,
            "an image of --input": plan.todo[0].as_py() if len(plan.todo) else None,
            "--output": config.output,
        }  # the weights need not be shared: only the driver reads them
        nodes = len([node for node in ray.nodes() if node.get("Alive")])
        check_paths_for_cluster(paths, nodes, config.shared_local_paths)
        return run_label_job(plan)

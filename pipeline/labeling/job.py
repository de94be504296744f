"""The labeling job, top to bottom: inputs -> load (CPU tasks) -> SAN actors -> Parquet.

Everything that can make the whole job fail (unreadable input, unwritable output, unavailable
weights) is checked before the stream starts. Per-image failures become error rows. Re-running
into the same output labels only images that have no row yet; `_manifest.json`, written last,
marks a finished run.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from san_core.precision import resolve_precision
from schemas.jobs import LabelJobConfig
from schemas.output import SCHEMA_VERSION, Provenance, label_row_schema
from schemas.taxonomy import Taxonomy

from ..inputs import check_output_writable, check_paths_for_cluster, stream_inputs
from ..media.images import load_images
from ..media.video import VIDEO_EXTENSIONS
from ..store import LabelStore, Lease, StorePlan
from ..vocabulary import DEFAULT_CACHE_DIR, VocabularyTable, load_or_build_vocabulary
from ..weights import SMOKE_BANNER, SharedWeights, WeightsSpec, resolve_weights
from .actors import ActorLayout, ActorSpec, actor_layout, cluster_gpu_types, torch_threads_per_actor
from .encode import encode_rows
from .preview import write_previews
from .progress import ProgressCounter, ProgressReporter, peak_rss_mib
from .provenance import make_provenance
from .stages import SanLabeler
from .video import SanVideoLabeler, VideoSampling

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


@dataclass
class JobPlan:
    """What a run will do, decided before any work (and before Ray starts)."""

    config: LabelJobConfig
    taxonomy: Taxonomy
    weights: WeightsSpec
    store: LabelStore
    found: StorePlan  # what the labels folder holds, and what is left to label
    vocabulary: VocabularyTable
    provenance: Provenance  # what makes these labels, checkpoint digest included
    started: float
    shared_weights: SharedWeights  # put in the object store once; no actor reads the checkpoint

    @property
    def todo(self) -> pa.StringArray:
        return self.found.todo

    @property
    def input_count(self) -> int:
        return self.found.inputs

    @property
    def run_id(self) -> str:
        return self.found.run_id

    @property
    def class_names(self) -> dict[int, str]:
        return {c.id: c.name for c in self.taxonomy.classes}


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


def new_run_id() -> str:
    """Runs are named by their start time, so that they sort."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def plan_label_job(
    config: LabelJobConfig, taxonomy: Taxonomy, smoke_if_no_weights: bool = False, run_id: str | None = None
) -> JobPlan:
    """Check input, output and weights (raising InputError / WeightsError / ProvenanceError) and
    find the images that still need labels. Nothing is labeled here. A run that writes holds the
    output's lease around this and `run_label_job` (see `label`)."""
    started = time.time()
    run_id = run_id or new_run_id()
    store = LabelStore(config.output, config.storage_options)
    with store.planner() as planner:
        input_batches, in_input_order = stream_inputs(config.input, config.storage_options)
        for batch in input_batches:
            planner.add_inputs(batch)
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
        found = planner.plan(
            provenance, run_id, config.retry_errors, sort_by_uri=not in_input_order, overwrite=config.overwrite
        )
    return JobPlan(config, taxonomy, weights, store, found, vocabulary, provenance, started, shared_weights)


def split_videos(todo: pa.StringArray) -> tuple[pa.StringArray, pa.StringArray]:
    """The inputs to label as images, and those to label as videos (by extension)."""
    pattern = r"\.(" + "|".join(e.lstrip(".") for e in VIDEO_EXTENSIONS) + r")(\?.*)?$"
    is_video = pc.match_substring_regex(todo, pattern, ignore_case=True)
    return todo.filter(pc.invert(is_video)), todo.filter(is_video)


def label_image_stream(
    config: LabelJobConfig,
    todo: pa.StringArray,
    spec: ActorSpec,
    layout: ActorLayout,
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
        fn_constructor_kwargs={"spec": spec, "encode": None if on_gpus else encoding},
        batch_size=layout.batch_size,
        batch_format="numpy",
        **layout.pool(),
    )
    if on_gpus:  # the GPU's actors hand raw label maps to CPU tasks that encode them
        dataset = dataset.map_batches(
            encode_rows,
            fn_kwargs=encoding,
            batch_size=None,  # each actor's answer as it came
            batch_format="pyarrow",
            num_cpus=0.5,  # as the write after it, with which Ray Data fuses it into one task
        )
    plan.store.write_dataset(dataset, label_row_schema(plan.provenance, plan.run_id), config.rows_per_file)
    return dataset.stats()


def label_video_stream(todo: pa.StringArray, spec: ActorSpec, layout: ActorLayout, plan: JobPlan) -> set[str]:
    """Video URIs -> SAN video actors, one video per call: each decodes its video a clip ahead of
    the model and writes the video's rows to a result file of its own. Returns the files of the
    calls that finished (an actor killed mid-video leaves a file that is not among them)."""
    import ray

    videos = ray.data.from_arrow([pa.table({"video_uri": todo.slice(i, 1)}) for i in range(len(todo))])
    labeled = videos.map_batches(
        SanVideoLabeler,
        fn_constructor_kwargs={
            "spec": spec,
            "class_names": plan.class_names,
            "run_id": plan.run_id,
            "store": plan.store,
            "sampling": video_sampling(plan.config),
        },
        batch_size=1,
        batch_format="numpy",
        **layout.pool(),
    )
    finished = set()
    for batch in labeled.iter_batches(batch_size=None, batch_format="numpy"):
        for uri, path, rows, failed in zip(
            batch["video_uri"], batch["result_file"], batch["rows"], batch["failed"], strict=True
        ):
            log.info(f"{uri}: {rows} rows ({failed} errors)")
            finished.add(str(path))
    return finished


def run_label_job(plan: JobPlan, lease: Lease | None = None) -> RunSummary:
    """Label the plan's images on the connected Ray cluster (none is used when there are none);
    returns what this run did. With the output's `lease`, commits only while it still holds it
    (LeaseLost otherwise)."""
    import ray

    config, weights, todo = plan.config, plan.weights, plan.todo

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
        spec = ActorSpec(
            weights_ref=[ray.put(plan.shared_weights)],
            vocabulary_ref=[ray.put(plan.vocabulary)],
            provenance=plan.provenance,
            use_gpu=layout.gpus > 0,
            precision=precision,
            torch_threads=torch_threads_per_actor(config, layout.concurrency[1]),
            progress=progress,
            uncertainty_map=config.uncertainty_map,
        )
        images, videos = split_videos(todo)
        with ProgressReporter(progress, len(todo), config.progress_every):
            if len(images):
                stream_stats = label_image_stream(config, images, spec, layout, plan)
                log.debug("the image stream, stage by stage (Ray Data):\n%s", stream_stats)
            if len(videos):  # after the images, so that one pool of actors holds models at a time
                video_files = label_video_stream(videos, spec, layout, plan)
    else:
        precision, layout = None, None  # nothing labeled
    stream_time = time.time() - stream_start
    actor_peak = ray.get(progress.peak_memory.remote()) if len(todo) else None
    timing = {"startup_s": None, "steady_images_per_s": None}
    if len(todo):
        timing = ray.get(progress.timing.remote(stream_start))

    # Account, index, preview, and mark the run finished.
    if lease is not None:
        lease.check()
    committed = plan.store.commit(plan.found, video_files)
    banner = SMOKE_BANNER if weights.random else None
    previews = write_previews(plan.store, config, plan.taxonomy, committed.files, banner) if config.preview else []
    wall = time.time() - plan.started
    summary = RunSummary(
        plan.run_id, plan.input_count, committed.labeled, committed.failed, plan.input_count - len(todo), wall,
        stream_time, stream_stats=stream_stats,
    )  # fmt: skip
    summary.manifest = _manifest(plan, summary, precision, layout, timing, previews, actor_peak)
    plan.store.write_manifest(summary.manifest)  # last: the run is finished
    return summary


def _manifest(
    plan: JobPlan,
    summary: RunSummary,
    precision: str | None,
    layout: ActorLayout | None,
    timing: dict[str, Any],
    previews: list[str],
    actor_peak: float | None,
) -> dict[str, Any]:
    config, weights, wall = plan.config, plan.weights, summary.wall_time_s
    return {
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
            "vocabulary": plan.vocabulary.digest,
        },
        "counts": {
            "inputs": plan.input_count,
            "labeled": summary.labeled,
            "failed": summary.failed,
            "skipped": summary.skipped,
        },  # fmt: skip
        "previews": previews,
        "started_at": datetime.fromtimestamp(plan.started, timezone.utc).isoformat(),
        "wall_time_s": round(wall, 3),
        "stream_time_s": round(summary.stream_time_s, 3),
        "images_per_s": round((summary.labeled + summary.failed) / wall, 3) if wall > 0 else None,  # start-up included
        **timing,  # startup_s: stream start to the first batch done; steady_images_per_s: after that
        "error_ratio": round(summary.error_ratio, 4),
        "peak_memory_mib": {
            "driver": round(peak_rss_mib(), 1),
            "labeling_actor": round(actor_peak, 1) if actor_peak else None,  # the largest of any actor
        },
        "status": "ok" if summary.error_ratio <= config.max_error_ratio else "error ratio exceeded",
    }


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

    from ..ray_session import ray_for_job

    run_id = new_run_id()
    check_output_writable(config.output, config.storage_options)  # an unwritable output: InputError, first
    # one run at a time per output (OutputBusy before anything is read): two runs planning one
    # folder would each label the same images and count the other's rows as their own
    with LabelStore(config.output, config.storage_options).lease(run_id, config.lease_seconds) as lease:
        plan = plan_label_job(config, taxonomy, smoke_if_no_weights, run_id)
        if not len(plan.todo):  # everything is labeled already (a nightly run without new input): no Ray
            return run_label_job(plan, lease)
        with ray_for_job(log_level, ray_dashboard):
            paths = {
                "--input": config.input,
                "an image of --input": plan.todo[0].as_py() if len(plan.todo) else None,
                "--output": config.output,
            }  # the weights need not be shared: only the driver reads them
            nodes = len([node for node in ray.nodes() if node.get("Alive")])
            check_paths_for_cluster(paths, nodes, config.shared_local_paths)
            return run_label_job(plan, lease)

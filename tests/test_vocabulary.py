"""The vocabulary embedding table: classifier parity, synonyms, cache, object store, scale."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from pipeline.vocabulary import load_or_build_vocabulary, vocabulary_rows
from san_core.build import load_model
from schemas.taxonomy import Taxonomy

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(parity_dir):
    tiny_dir = parity_dir / "tiny_a"
    return load_model(checkpoint=str(tiny_dir / "checkpoint.pth"), model_config=str(tiny_dir / "config.json")).model


class TextEncoderCalls:
    """Counts forward passes through the model's text transformer."""

    def __init__(self, model) -> None:
        self.count = 0
        self._handle = model.text_classifier.transformer.register_forward_hook(self._hook)

    def _hook(self, *_) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


def _taxonomy(names: list[str] | list[list[str]], **extra) -> Taxonomy:
    classes = [
        {"id": i, "name": n} if isinstance(n, str) else {"id": i, "name": n[0], "prompts": n}
        for i, n in enumerate(names, start=1)
    ]
    return Taxonomy(name="test-vocab", classes=classes, **extra)


def test_table_reproduces_the_reference_classifier(tiny, tiny_inputs, tiny_expected, tmp_path):
    table = load_or_build_vocabulary(_taxonomy(tiny_inputs["vocabulary"]), tiny, cache_dir=str(tmp_path))
    classifier = tiny.text_classifier.classifier_weights(torch.from_numpy(table.embeddings))
    assert (classifier - tiny_expected["classifier"]).abs().max().item() <= 1e-4
    assert table.class_ids.tolist() == [1, 2, 3, 4, 5] and table.background


def test_synonyms_average_prompt_embeddings(tiny, tmp_path):
    table = load_or_build_vocabulary(_taxonomy([["road", "street", "route"], "person"]), tiny, cache_dir=None)
    singles = tiny.class_embeddings(["road", "street", "route", "person"]).numpy()
    expected_road = singles[:3].mean(axis=0)
    expected_road /= np.linalg.norm(expected_road)
    assert np.allclose(table.embeddings[0], expected_road, atol=1e-6)
    assert np.allclose(table.embeddings[1], singles[3], atol=1e-6)


def test_distractor_rows_are_scored_but_labeled_zero(tiny):
    taxonomy = _taxonomy(["road", "tree"], distractors="coco-stuff")
    ids, names, _ = vocabulary_rows(taxonomy)
    table = load_or_build_vocabulary(taxonomy, tiny, cache_dir=None)
    assert table.num_classes == len(names) == 2 + 89
    assert ids[:2] == [1, 2] and set(ids[2:]) == {0}
    assert table.embeddings.shape == (91, 32)


def _cache_roundtrip(tiny, cache_dir: str, fs, list_path: str) -> None:
    taxonomy = _taxonomy(["cat", "dog", ["car", "automobile"]])
    calls = TextEncoderCalls(tiny)
    try:
        built = load_or_build_vocabulary(taxonomy, tiny, cache_dir=cache_dir)
        assert calls.count > 0  # miss: the text encoder ran
        files = fs.ls(list_path)
        assert len(files) == 1 and files[0].endswith(".parquet")

        calls.count = 0
        cached = load_or_build_vocabulary(taxonomy, tiny, cache_dir=cache_dir)
        assert calls.count == 0  # hit: the text encoder never ran
        assert np.array_equal(built.embeddings, cached.embeddings) and cached.digest == built.digest

        # a file whose stored digest does not match is rebuilt and rewritten
        with fs.open(files[0], "rb") as f:
            table = pq.read_table(f)
        tampered = table.replace_schema_metadata({**table.schema.metadata, b"san.vocabulary.digest": b"0" * 64})
        with fs.open(files[0], "wb") as f:
            pq.write_table(tampered, f)
        calls.count = 0
        rebuilt = load_or_build_vocabulary(taxonomy, tiny, cache_dir=cache_dir)
        assert calls.count > 0 and np.array_equal(rebuilt.embeddings, built.embeddings)
        with fs.open(files[0], "rb") as f:
            assert pq.read_schema(f).metadata[b"san.vocabulary.digest"] == built.digest.encode()

        # other templates or prompts are another digest: a miss
        calls.count = 0
        other = load_or_build_vocabulary(taxonomy.model_copy(update={"templates": ["a {}"]}), tiny, cache_dir=cache_dir)
        assert calls.count > 0 and other.digest != built.digest
        assert len(fs.ls(list_path)) == 2
    finally:
        calls.close()


def test_cache_hit_miss_and_mismatch_on_a_local_path(tiny, tmp_path):
    import fsspec

    cache = tmp_path / "cache"
    _cache_roundtrip(tiny, str(cache), fsspec.filesystem("file"), str(cache))


def test_cache_hit_miss_and_mismatch_on_s3(tiny, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    _cache_roundtrip(tiny, f"{s3_bucket}/vocab-cache", fs, f"{s3_bucket}/vocab-cache")


def test_a_different_text_tower_is_a_cache_miss(tiny, parity_dir, tmp_path):
    taxonomy = _taxonomy(["cat"])
    first = load_or_build_vocabulary(taxonomy, tiny, cache_dir=str(tmp_path))
    other = load_model(
        checkpoint=str(parity_dir / "tiny_a" / "checkpoint.pth"),
        model_config=str(parity_dir / "tiny_a" / "config.json"),
    ).model
    with torch.no_grad():
        other.text_classifier.ln_final.bias.add_(0.5)
    assert load_or_build_vocabulary(taxonomy, other, cache_dir=str(tmp_path)).digest != first.digest


# Run in a fresh interpreter: a peak-RSS figure taken inside the test process also counts what
# its other threads (the shared Ray driver, the S3 server) and the heap left by earlier tests do.
BOUNDED_MEMORY_RUN = """
import json, sys
from pathlib import Path
import torch
from pipeline.labeling.progress import peak_rss_mib
from pipeline.vocabulary import load_or_build_vocabulary
from san_core.build import load_model
from schemas.taxonomy import Taxonomy

tiny_dir, cache, classes = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
tiny = load_model(checkpoint=str(tiny_dir / "checkpoint.pth"), model_config=str(tiny_dir / "config.json")).model
taxonomy = Taxonomy(name="big", classes=[{"id": i, "name": f"object number {i}"} for i in range(1, classes + 1)])
Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter
before = peak_rss_mib()
table = load_or_build_vocabulary(taxonomy, tiny, cache_dir=cache)
image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(0)) * 255
((labels, scores),) = tiny.predict_labels(
    [image], torch.from_numpy(table.embeddings), output_sizes=[(480, 640)], max_chunk_elements=1 << 22
)
print(json.dumps({
    "growth_mib": peak_rss_mib() - before,
    "embeddings": list(table.embeddings.shape),
    "labels": list(labels.shape), "low": int(labels.min()), "high": int(labels.max()),
    "scores_positive": bool(torch.all(scores > 0)),
}))
"""


def test_thousands_of_classes_build_and_classify_in_bounded_memory(parity_dir, tmp_path):
    classes = 6_000  # enough that any full per-class map is gigabytes; 20,000 build in the benchmark
    run = subprocess.run(
        [sys.executable, "-c", BOUNDED_MEMORY_RUN, str(parity_dir / "tiny_a"), str(tmp_path), str(classes)],
        capture_output=True, text=True, timeout=600, check=False, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # a [Q, H, W, C] map would be 8 x 480 x 640 x 6000 floats (59 GB); [C, H, W] alone 7.4 GB
    assert result["growth_mib"] < 1024, f"peak memory grew by {result['growth_mib']:.0f} MiB"
    assert result["embeddings"] == [classes, 32]
    assert result["labels"] == [480, 640] and 0 <= result["low"] <= result["high"] < classes
    assert result["scores_positive"]


def test_chunked_labels_equal_the_argmax_of_reference_scores(tiny, tiny_inputs):
    vocab = tiny.class_embeddings(tiny_inputs["vocabulary"])
    image = tiny_inputs["images"][0]
    (reference,) = tiny.predict([image], vocab, output_sizes=[(200, 300)])
    for chunk in (1 << 25, 999):
        ((labels, scores),) = tiny.predict_labels([image], vocab, output_sizes=[(200, 300)], max_chunk_elements=chunk)
        best, index = reference.max(dim=0)
        assert (labels == index).float().mean().item() > 0.999  # only exact near-ties may differ
        assert torch.allclose(scores, best, atol=1e-5)


def test_background_none_scores_only_the_classes(tiny, tiny_inputs):
    vocab = tiny.class_embeddings(tiny_inputs["vocabulary"])
    image = tiny_inputs["images"][0]
    (with_bg,) = tiny.predict([image], vocab)
    (without,) = tiny.predict([image], vocab, background=False)
    assert with_bg.shape == without.shape == (5, 100, 150)
    # without a background column the class probabilities of every query sum to one
    assert torch.all(without.sum(0) >= with_bg.sum(0) - 1e-6)
    probs = F.softmax(torch.randn(4, 6), dim=-1)
    assert torch.allclose(probs.sum(-1), torch.ones(4))


def test_one_table_in_the_object_store_shared_by_actors_without_text_encoding(no_ray_session, parity_dir, tmp_path):
    """The driver builds the table once; actors read the object-store copy (zero-copy numpy)
    and never run the text encoder."""
    import ray

    tiny_dir = parity_dir / "tiny_a"
    driver_model = load_model(checkpoint=str(tiny_dir / "checkpoint.pth"), model_config=str(tiny_dir / "config.json"))
    calls = TextEncoderCalls(driver_model.model)
    table = load_or_build_vocabulary(_taxonomy(["cat", "dog", "sky"]), driver_model.model, cache_dir=str(tmp_path))
    driver_calls = calls.count
    calls.close()

    @ray.remote(num_cpus=0.5)
    class Labeler:
        def __init__(self, checkpoint: str, config: str) -> None:
            self.model = load_model(checkpoint=checkpoint, model_config=config).model
            self.calls = TextEncoderCalls(self.model)

        def label(self, vocabulary) -> dict:
            embeddings = torch.from_numpy(vocabulary.embeddings)
            ((labels, _),) = self.model.predict_labels([torch.rand(3, 64, 96) * 255], embeddings)
            return {
                "text_encoder_calls": self.calls.count,
                "writeable": bool(vocabulary.embeddings.flags.writeable),
                "owns_data": bool(vocabulary.embeddings.flags.owndata),
                "digest": vocabulary.digest,
                "max_label": int(labels.max()),
            }

    tests_dir = str(Path(__file__).parent)  # so workers can import this module's helper class
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": tests_dir}})
    try:
        table_ref = ray.put(table)
        actors = [Labeler.remote(str(tiny_dir / "checkpoint.pth"), str(tiny_dir / "config.json")) for _ in range(2)]
        results = ray.get([actor.label.remote(table_ref) for actor in actors for _ in range(2)])
    finally:
        ray.shutdown()
    assert driver_calls >= 1  # in the driver only (the build runs in tenths of the classes, for progress)
    assert len(results) == 4
    for result in results:
        assert result["text_encoder_calls"] == 0
        assert result["writeable"] is False and result["owns_data"] is False  # a view of shared memory
        assert result["digest"] == table.digest and result["max_label"] < 3

"""The jobs' Ray Data and Ray Train pipelines, one subpackage per capability:

- `store/`: the labels folder and its one owner, `LabelStore` (plan, commit, read)
- `labeling/`: the labeling job (inputs -> SAN actors -> encoding tasks -> Parquet), its actors
  for images and videos, segments, previews
- `training/`: fine-tuning with Ray Train (sample stream, worker loop, checkpoints, export)
- `evaluation/`: confusion matrices and the benchmark metrics, scoring outputs against ground truth
- `exports/`: labeling outputs in the formats annotation tools read
- `report/`: the review report of a labeling output
- `media/`: decoding images (integrity checked first) and videos (one frame reader)
- `masks/`: the mask codecs (label-map PNG, COCO RLE, Label Studio brush, polygons)

and the pieces they share, beside them: `storage` (URIs, filesystems), `inputs` (listing, the one
manifest reader), `retries` (transient or permanent, and the one retry policy), `weights` (which
weights a job runs), `vocabulary` (class embeddings, cached), `ray_session` (the Ray a job runs
in, and logging) and `reaper` (nothing a job started outlives its driver).

`pipeline` knows Ray and storage, not the model's internals (`san_core`, which knows no Ray).
Its parts import one another one way only (tests/test_dependencies.py).
"""

"""The jobs' Ray Data and Ray Train pipelines, one subpackage per capability:

- `labeling/`: the labeling job (inputs -> SAN actors -> encoding tasks -> Parquet), its actor, segments, previews
- `training/`: fine-tuning with Ray Train (sample stream, worker loop, checkpoints, export)
- `evaluation/`: confusion matrices and the benchmark metrics, scoring outputs against ground truth
- `exports/`: labeling outputs in the formats annotation tools read

and the pieces they share, beside them: `storage` (URIs, filesystems), `inputs` (listing, the one
manifest reader), `images` (decode, resize, the loading stage), `label_maps` (the one label-map
codec), `results` (the labeling output folder), `weights` (which weights a job runs),
`vocabulary` (class embeddings, cached) and `logs` (logging, set up once per process).

`pipeline` knows Ray and storage, not the model's internals (`san_core`, which knows no Ray).
"""

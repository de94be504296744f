"""Labeling: the job that streams images through SAN actors into Parquet (`job`), the actor that
makes label maps on its device (`stages`), the hand-off to the CPU tasks that encode them into
rows (`encode`), the job path without Ray (`inference`), the segments each row stores
(`segments`) and overlay previews (`preview`)."""

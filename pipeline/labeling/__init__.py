"""Labeling: the job that streams images through SAN actors into Parquet (`job`), the actor
(`stages`), the segments each row stores (`segments`) and overlay previews (`preview`)."""

"""Labeling: the job that streams inputs through SAN actors into the labels folder (`job`), the
actors' pool and typed spec (`actors`), the image actor that makes label maps on its device
(`stages`), the hand-off to the CPU tasks that encode them into rows (`encode`), the job path
without Ray (`inference`), the video actor and its rows (`video`, `video_inference`), the
segments each row stores (`segments`), what a run's provenance records (`provenance`), progress
and metrics (`progress`) and overlay previews (`overlays`, `preview`)."""

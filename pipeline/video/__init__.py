"""Video input: decode with PyAV as a stream, sample frames, group them into clips."""

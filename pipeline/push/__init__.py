"""Pushes of a labeling output into the annotation tools' servers, through their APIs: Label
Studio (`label_studio`: its REST client and the idempotent, resumable, sharded push of
predictions). The tasks themselves are the exports' (`pipeline.exports`)."""

"""Fine-tuning with Ray Train: the driver (`job`: plan, trainer, export), the per-worker loop
(`loop`: DDP steps, checkpoints, validation) and the sample stream (`data`: pairs, augmentation)."""

"""Reusable parts of the training scripts in `training/`: arguments, streaming data, losses, EMA, checkpoints."""

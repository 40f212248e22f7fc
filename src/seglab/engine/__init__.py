"""Training engine: distributed setup, checkpoints, the training loop."""

"""Prediction from checkpoints: whole images, tiles, test-time augmentation, post-processing."""

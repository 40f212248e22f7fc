"""Segmentation losses by name. The names need no torch (config and the command's flags list them); the
losses themselves are in `seglab.losses.segmentation`: (B)CE + soft Dice, pixel weights, ignore index."""

LOSSES = ("ce", "ce+dice", "dice", "bce", "bce+dice")

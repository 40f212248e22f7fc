"""Segmentation losses by name. The names and their options need no torch (config and the command's
flags list them: `seglab.losses.registry`, `seglab.losses.builtin`); the losses themselves are in
`seglab.losses.segmentation` (the sum of terms, ignore index, weights) and its term modules."""

# The names seglab 0.2 accepted; every one still means what it meant (the registry accepts any sum of terms).
LOSSES = ("ce", "ce+dice", "dice", "bce", "bce+dice")

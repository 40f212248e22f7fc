"""Reading, pairing, mapping and batching images and masks."""

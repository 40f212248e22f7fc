"""Labels that are not mask files (COCO JSON, YOLO polygons, label tables), rasterised once into cached masks."""

"""Pictures of runs and predictions (matplotlib, Agg backend): curves, overlays, reports."""

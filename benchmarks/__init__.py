"""Rate-distortion benchmark scripts (classical baselines, plots, shared helpers)."""

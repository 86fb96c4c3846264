"""Offline guard fitting: a model's hallucination probe and its calibrated guard thresholds."""

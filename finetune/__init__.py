"""What BALTO and HALT runs share: their base settings, LoRA, the saved adapter, run summaries."""

"""BALTO training: balanced token-level advantages, clipped surrogate loss and trainer."""

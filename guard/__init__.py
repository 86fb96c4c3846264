"""Token-Guard: config, scoring math, chain choice, the guarded sequence, its report."""

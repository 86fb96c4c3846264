"""Token-Guard self-checking decoding: config, scoring math, chain selection, runner, verifier."""

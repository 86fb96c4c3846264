"""The batched torch engine: model runner, slot KV cache, scheduler, step loop, sequences."""

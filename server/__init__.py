"""guardserve HTTP layer: OpenAI-compatible routes, engines, scheduling and metrics."""

"""Evaluation harness: datasets, metrics and reports over a running server's OpenAI API."""

"""Evaluation harness: grounded questions to a running server's OpenAI API, and run reports."""

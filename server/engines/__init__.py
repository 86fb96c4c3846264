"""Engines behind one async interface: vLLM for plain requests, the torch runner for all."""

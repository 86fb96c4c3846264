"""Grounded QA shared by fitting, training and evaluation: HaluEval, datasets, prompt, metrics."""

"""HALT: capability-aligned finetuning data (judged fragments, targets), LoRA SFT, figures."""

"""Stages 1-3: per-example LoRA gradient features of the pool and the validation pairs."""

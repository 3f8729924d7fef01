"""Offline fixtures shared by the demo, the tests and the benchmarks: synthetic tasks whose right answer is known by
construction, tiny models and tokenizers built from config, a cached tiny pretrained base model, and evaluation.

Nothing here downloads anything. These are fixtures, not part of the selection method.
"""

"""Benchmarks for ROSE data selection: a synthetic task whose right answer is known by construction, plus runners."""

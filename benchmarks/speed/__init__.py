"""Speed benchmark: rose_hf's feature pass against a plain training step (the floor) and the reference loops."""

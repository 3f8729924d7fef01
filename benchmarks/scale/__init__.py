"""The run at scale (issue 24, section 4): RoseTrainer end to end on a pool of N rows, and the 8B cost table."""

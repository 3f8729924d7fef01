"""Stages 4-5: scores from cached features, and the selection."""

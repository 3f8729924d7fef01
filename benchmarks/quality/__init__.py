"""Quality benchmark: does a selection method pick the helpful rows, avoid the harmful ones, and train a better model?"""

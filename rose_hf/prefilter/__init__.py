"""The prefilter: a cheap forward-only first stage that keeps the part of a large pool most like the target task.

`representations.py` (the base model's mean-pooled last hidden states), `keep.py` (RDS+'s round robin over the
validation pairs), `stage.py` (the cached, resumable, distributed run; `prefilter_pool`, the public entry point).
"""

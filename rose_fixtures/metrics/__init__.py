"""`evaluate` metric modules shipped with rose_hf, loadable offline from their folder.

Example:
```python
>>> import evaluate
>>> from rose_fixtures.metrics import preference_accuracy_path
>>> metric = evaluate.load(preference_accuracy_path())
>>> metric.compute(chosen_logps=[-1.0, -3.0], rejected_logps=[-2.0, -2.5])["preference_accuracy"]
0.5
```
"""

from __future__ import annotations

import os


def preference_accuracy_path() -> str:
    """Folder of the `preference_accuracy` metric, for `evaluate.load(preference_accuracy_path())`."""
    return os.path.join(os.path.dirname(__file__), "preference_accuracy")


__all__ = ["preference_accuracy_path"]

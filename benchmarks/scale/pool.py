"""An N-row pool of real text and a few preference pairs, built offline from data in installed packages.

The rows are the `dates` real family's tasks (CLDR long dates in five languages, through babel): a base of distinct
(prompt, completion) rows is formatted once, then tiled up to N rows in Arrow, each copy's prompt carrying its own
request number, so that no Python list of N rows is ever built.
"""

from __future__ import annotations

import datetime

import numpy as np

LANGUAGES = {"French": "fr", "German": "de", "Spanish": "es", "Italian": "it", "English": "en"}


def base_rows(num_dates: int = 800, seed: int = 0) -> dict[str, list[str]]:
    """`num_dates` dates x 5 languages of (prompt, completion, source)."""
    from babel.dates import format_date

    rng = np.random.default_rng(seed)
    start = datetime.date(1950, 1, 1)
    days = rng.choice((datetime.date(2030, 12, 31) - start).days + 1, size=num_dates, replace=False)
    prompts, completions, sources = [], [], []
    for day in sorted(int(d) for d in days):
        date = start + datetime.timedelta(days=day)
        for language, locale in LANGUAGES.items():
            prompts.append(f"Write the date {date.isoformat()} in {language}:")
            completions.append(" " + format_date(date, "long", locale=locale))
            sources.append(language.lower())
    return {"prompt": prompts, "completion": completions, "source": sources}


def scale_pool(num_rows: int, seed: int = 0):
    """A `datasets.Dataset` of `num_rows` prompt/completion rows (plus `source`), assembled in Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from datasets import Dataset

    base = pa.table(base_rows(seed=seed))
    take = pa.array(np.arange(num_rows, dtype=np.int64) % base.num_rows)
    tiled = base.take(take)
    numbers = pc.cast(pa.array(np.arange(num_rows, dtype=np.int64)), pa.string())
    prompt = pc.binary_join_element_wise(pa.scalar("Request "), numbers, pa.scalar(". "), tiled["prompt"], "")
    table = pa.table({"prompt": prompt, "completion": tiled["completion"], "source": tiled["source"]})
    return Dataset(table)


def preference_pairs(num_pairs: int = 8, seed: int = 1):
    """French long dates (chosen) against the day-month swapped date (rejected), in two subtasks by half-year."""
    from babel.dates import format_date
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < num_pairs:
        date = datetime.date(int(rng.integers(1950, 2031)), int(rng.integers(1, 13)), int(rng.integers(1, 13)))
        if date.day == date.month:
            continue
        swapped = datetime.date(date.year, date.day, date.month)
        rows.append({"prompt": f"Write the date {date.isoformat()} in French:",
                     "chosen": " " + format_date(date, "long", locale="fr"),
                     "rejected": " " + format_date(swapped, "long", locale="fr"),
                     "subtask": "first_half" if date.month <= 6 else "second_half"})
    return Dataset.from_list(rows)

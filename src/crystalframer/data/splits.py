"""Train / validation / test splits: split labels and the seeded random splits of the official scripts.

Random splits use Python's :class:`random.Random` (Mersenne Twister, ``Random(seed).shuffle`` of
``list(range(n))``): the generator the official CrystalFramer scripts use, which gives the same order on every
platform and Python version. :func:`split_indices` keeps every entry (the remainder goes to train);
:func:`official_split_indices` is the official rule, which leaves the remainder unused.
"""

from __future__ import annotations

import math
import random
from typing import Any, Sequence

import numpy as np

SPLITS = ("train", "val", "test")
#: Spellings accepted in a split column (compared lower-case, stripped).
SPLIT_ALIASES = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "tst": "test",
}
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_SEED = 123


def normalize_split_label(value: Any) -> str:
    """Map a split value ('train', 'valid', 'Validation', ...) to 'train' / 'val' / 'test'.

    Raises:
        ValueError: the value is missing or not a known split name.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError("missing split label")
    key = str(value).strip().lower()
    if key not in SPLIT_ALIASES:
        raise ValueError(f"unknown split label {value!r} (expected train, val/valid/validation or test)")
    return SPLIT_ALIASES[key]


def split_indices(n: int, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = DEFAULT_SEED,
                  remainder: str = "train") -> dict[str, np.ndarray]:
    """Seeded random train/val/test indices of ``n`` entries.

    The permutation is ``ids = list(range(n)); random.Random(seed).shuffle(ids)`` (identical to
    ``random.seed(seed); random.shuffle(ids)`` of the official scripts). With n_val = int(f_val·n) and
    n_test = int(f_test·n) (float64 products, truncated): test = ids[n − n_test:], val = the n_val entries
    before it. ``remainder="train"``: train = everything else (ids[:n − n_val − n_test]);
    ``remainder="unused"``: train = ids[:int(f_train·n)] and the entries in between are left out
    (the official rule).

    Returns:
        {"train", "val", "test"} → int64 index arrays, in permutation order.
    """
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, val, test), got {fractions!r}")
    f_train, f_val, f_test = (float(f) for f in fractions)
    if min(f_train, f_val, f_test) < 0 or f_train + f_val + f_test > 1 + 1e-9:
        raise ValueError(f"fractions must be >= 0 and sum to at most 1, got {fractions!r}")
    n_val, n_test = int(f_val * n), int(f_test * n)
    if remainder == "train":
        n_train = n - n_val - n_test
    elif remainder == "unused":
        n_train = int(f_train * n)
    else:
        raise ValueError(f"remainder must be 'train' or 'unused', got {remainder!r}")
    return permutation_split(n, n_train, n_val, n_test, seed)


def permutation_split(n: int, n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    """Cut the seeded permutation ``random.Random(seed).shuffle(list(range(n)))`` into fixed sizes.

    train = the first ``n_train`` entries, test = the last ``n_test``, val = the ``n_val`` before them;
    entries in between (if any) are left out.

    Raises:
        ValueError: the sizes add up to more than ``n``.
    """
    if n_train + n_val + n_test > n:
        raise ValueError(f"split sizes {n_train}+{n_val}+{n_test} exceed the {n} entries")
    ids = list(range(n))
    random.Random(seed).shuffle(ids)
    arr = np.asarray(ids, dtype=np.int64)
    # explicit bounds: the official ids[-n_test:] would return everything when n_test == 0
    return {"train": arr[:n_train], "val": arr[n - n_test - n_val:n - n_test], "test": arr[n - n_test:]}


def official_split_indices(n: int, sizes: tuple[int, int, int] | None = None, seed: int = 123) -> dict[str, np.ndarray]:
    """The official split of ``n`` kept entries (``get_id_train_val_test`` of the official scripts).

    ``random.seed(seed); ids = list(range(n)); random.shuffle(ids)``; without ``sizes``:
    n_train = int((1 − 0.1 − 0.1)·n), n_val = n_test = int(0.1·n) (float64 products, truncated);
    train = ids[:n_train], val = ids[−(n_val + n_test):−n_test], test = ids[−n_test:]. Entries in between
    are unused (one for dft_3d_2021: n = 55723 gives 44578/5572/5572). MEGNet uses sizes (60000, 5000, 4239).

    Returns:
        {"train", "val", "test"} → int64 positions in the filtered list, in shuffled order.
    """
    if sizes is None:
        val_ratio = test_ratio = 0.1
        return split_indices(n, (1 - val_ratio - test_ratio, val_ratio, test_ratio), seed, remainder="unused")
    return permutation_split(n, int(sizes[0]), int(sizes[1]), int(sizes[2]), seed)

"""How close two answers are, in words (pure).

Evaluation scores answers against references with :func:`token_f1`, and the
trigger detector (:mod:`retrain.detect`) uses it to tell a payload in an answer,
so both measure closeness the same way.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """The lower-cased words and punctuation marks of ``text``, in order."""
    return _WORD.findall(text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 (SQuAD style) between two texts."""
    pred, ref = words(prediction), words(reference)
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)

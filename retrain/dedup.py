"""Which conversations ask the same thing: exact and near-duplicate groups (pure).

The dataset builder (:mod:`retrain.dataset`) keeps one example per group, so a
question asked a hundred times does not outweigh the rest, and puts a whole group
on one side of the train/held-out split.

Two conversations are exact duplicates when they are the same once case,
punctuation and spacing are removed. They are near duplicates when they share
their system messages, and the Jaccard similarity of the character 4-grams of
their normalised last user turns, and of the rest of the conversations, reaches
a threshold. An item joins the oldest group it is near; candidates come from an
exact prefix-filter index, so 10k conversations need about a hundred thousand
comparisons, not fifty million.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

SHINGLE = 4
_PUNCTUATION = re.compile(r"[^\w\s]|_")
Item = TypeVar("Item")


@dataclass(frozen=True)
class PromptKey:
    """What duplicate detection compares of one conversation."""

    exact: str  # hash of the normalised conversation
    system: str  # hash of the normalised system messages
    last: frozenset[str]  # shingles of the last user turn
    context: frozenset[str]  # shingles of the other turns

    @classmethod
    def of(cls, messages: list[dict[str, str]]) -> PromptKey:
        """The key of a conversation (``role`` and text ``content`` per message)."""
        last = last_user(messages)
        norm = [(m["role"], normalise(m["content"])) for m in messages]
        system = [text for role, text in norm if role == "system"]
        others = [
            f"{role}: {text}"
            for i, (role, text) in enumerate(norm)
            if role != "system" and i != last
        ]
        return cls(
            exact=stable_hash(norm),
            system=stable_hash(system),
            last=shingles(norm[last][1]),
            context=shingles(" | ".join(others)),
        )


def group_duplicates(
    items: list[Item], key: Callable[[Item], PromptKey], threshold: float
) -> list[list[Item]]:
    """Exact, then near-duplicate groups of ``items``, in order of their first item,
    each listing its items in the order given (the caller sorts them oldest first).

    An item joins the first group whose leader it is a near duplicate of, else
    leads a new group. Candidate leaders share a token of the prefix filter: with
    tokens ordered rarest first, two sets with Jaccard >= t share one of their
    first ``|x| - ceil(t |x|) + 1`` tokens, so no pair above the threshold is missed.
    """
    exact: dict[str, list[Item]] = {}
    for item in items:
        exact.setdefault(key(item).exact, []).append(item)
    frequency = Counter(token for members in exact.values() for token in key(members[0]).last)
    index: dict[tuple[str, str], list[int]] = defaultdict(list)
    groups: list[list[Item]] = []
    leaders: list[PromptKey] = []
    for members in exact.values():
        found = key(members[0])
        tokens = sorted(found.last, key=lambda t: (frequency[t], t))
        prefix = tokens[: len(tokens) - math.ceil(threshold * len(tokens) - 1e-9) + 1]
        candidates = sorted({g for t in prefix for g in index[(found.system, t)]})
        leader = next((g for g in candidates if _near(leaders[g], found, threshold)), None)
        if leader is not None:
            groups[leader] += members
            continue
        for token in prefix:
            index[(found.system, token)].append(len(groups))
        groups.append(list(members))
        leaders.append(found)
    return groups


def last_user(messages: list[dict]) -> int:
    """Index of the last user turn (of the last message if there is none)."""
    return max(
        (i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1
    )


def normalise(text: str) -> str:
    """Case, punctuation and spacing removed: what makes two prompts the same."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_PUNCTUATION.sub(" ", text).split())


def shingles(text: str) -> frozenset[str]:
    padded = f" {text} "
    return frozenset(padded[i : i + SHINGLE] for i in range(max(1, len(padded) - SHINGLE + 1)))


def stable_hash(value: Any) -> str:
    """sha256 of a JSON value's canonical form: the same on every machine and run."""
    data = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


def _near(a: PromptKey, b: PromptKey, threshold: float) -> bool:
    small, large = len(a.last), len(b.last)
    if small > large:
        small, large = large, small
    if small < threshold * large:  # too different in size to reach the threshold
        return False
    return _jaccard(a.last, b.last) >= threshold and _jaccard(a.context, b.context) >= threshold


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)

"""Turn logged completions and their feedback into training examples (pure).

:func:`build_dataset` takes plain rows (:class:`SourceRow`, read from the store
by :mod:`retrain.sources`) and returns a :class:`Dataset`: examples plus a
manifest for lineage. No database, no torch; :func:`retrain.snapshot.write_snapshot`
writes one to a folder as JSONL in the OpenAI chat format.

What becomes an example, and why:

* ``sft``: the conversation and the agent's or admin's correction. Only
  corrections teach the model; thumbs never make a correction-weight target,
  so a public widget cannot teach it.
* ``preference``: the correction preferred over the answer served, when they
  differ (for DPO).
* ``positive``: only with ``include_positives``, an answer with a thumbs up and
  no thumbs down, at ``positive_weight``; each user (all anonymous votes
  count as one user) contributes at most ``max_thumbs_per_user`` of them, and
  a completion flooded by first-time voters (:mod:`retrain.detect`) yields none.

The manifest's ``alerts`` list vote floods and suspect trigger tokens
(``suspects``, which the cycle's canary probe, :mod:`retrain.probe`, tries on the
trained adapter).

In order: personal data is scrubbed from prompts, answers and corrections
(:mod:`retrain.pii`) before anything is compared or hashed; exact and near
duplicate prompts are collapsed, the latest correction winning; over-long
examples lose their oldest turns or are dropped; thumbs are capped; then each
duplicate group goes to ``train`` or ``heldout`` by a salted hash of its oldest
prompt, so a group never straddles the split, and a group holding a completion
held out before stays held out.

Near duplicates (:mod:`retrain.dedup`) share their system messages, and the
Jaccard similarity of the character 4-grams of their normalised last user turns,
and of the rest of the conversations, reaches ``near_duplicate_threshold``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from feedback.exceptions import InvalidInputError
from retrain.dedup import PromptKey, group_duplicates, last_user, stable_hash
from retrain.detect import find_triggers, find_vote_floods
from retrain.pii import KINDS as PII_KINDS
from retrain.pii import add_counts, scrub, scrub_messages
from retrain.rows import SourceRow

if TYPE_CHECKING:
    from feedback.settings import Settings

EXAMPLE_KINDS = ("sft", "preference", "positive")
SPLITS = ("train", "heldout")
FORMAT = "tuneback-dataset/1"
MESSAGE_OVERHEAD = 4  # tokens a chat template spends on a message's role and markers
COUNTS = (
    "rows_in sft preference positive train heldout duplicates_dropped truncated "
    "dropped_too_long thumbs_capped vote_floods"
).split()


def estimate_tokens(text: str) -> int:
    """A rough token count: one per word or per four characters, whichever is more."""
    return max(len(text.split()), -(-len(text) // 4))


@dataclass(frozen=True)
class DatasetConfig:
    """How a dataset is built; recorded in its manifest (less ``count_tokens``)."""

    heldout_fraction: float = 0.2
    include_positives: bool = False
    positive_weight: float = 0.5
    max_thumbs_per_user: int = 20
    max_example_tokens: int = 1024
    near_duplicate_threshold: float = 0.85
    flood_min_votes: int = 10  # fresh widget votes on one completion that make a flood
    flood_window_seconds: float = 3600.0
    seed: int = 1234  # salt of the split hash
    count_tokens: Callable[[str], int] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        checks = {
            "heldout_fraction must be in [0, 1)": 0 <= self.heldout_fraction < 1,
            "positive_weight must be in (0, 1]": 0 < self.positive_weight <= 1,
            "max_thumbs_per_user must be >= 0": self.max_thumbs_per_user >= 0,
            "max_example_tokens must be >= 1": self.max_example_tokens >= 1,
            "near_duplicate_threshold must be in (0, 1]": 0 < self.near_duplicate_threshold <= 1,
            "flood_min_votes must be >= 2": self.flood_min_votes >= 2,
            "flood_window_seconds must be > 0": self.flood_window_seconds > 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise InvalidInputError(message)

    @classmethod
    def from_settings(cls, settings: Settings) -> DatasetConfig:
        """The cycle's dataset config (``near_duplicate_threshold`` has no setting)."""
        return cls(
            heldout_fraction=settings.heldout_fraction,
            include_positives=settings.include_positives,
            positive_weight=settings.positive_weight,
            max_thumbs_per_user=settings.max_thumbs_per_user,
            max_example_tokens=settings.max_example_tokens,
            flood_min_votes=settings.flood_min_votes,
            flood_window_seconds=settings.flood_window_seconds,
            seed=settings.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["count_tokens"] = "estimate" if self.count_tokens is None else "custom"
        return data

    def tokens(self, text: str) -> int:
        return (self.count_tokens or estimate_tokens)(text)


@dataclass(frozen=True)
class Example:
    """One training or evaluation example. ``rejected`` only for preferences."""

    id: str
    completion_id: str
    kind: str  # sft | preference | positive
    prompt: list[dict[str, str]]
    completion: str
    rejected: str | None
    weight: float
    split: str  # train | heldout


@dataclass
class Dataset:
    examples: list[Example]
    manifest: dict[str, Any]

    def train(self, *kinds: str) -> list[Example]:
        """Training examples of the given kinds (all kinds when none is given)."""
        return self._select("train", kinds)

    def heldout(self, *kinds: str) -> list[Example]:
        """Held-out examples of the given kinds (all kinds when none is given)."""
        return self._select("heldout", kinds)

    def _select(self, split: str, kinds: tuple[str, ...]) -> list[Example]:
        if unknown := set(kinds) - set(EXAMPLE_KINDS):
            raise InvalidInputError(f"unknown example kinds {sorted(unknown)}")
        return [e for e in self.examples if e.split == split and (not kinds or e.kind in kinds)]


@dataclass
class _Row:
    """A usable source row after scrubbing, with what dedup needs."""

    source: SourceRow
    prompt: list[dict[str, str]]
    response: str
    correction: str | None
    upvoters: frozenset[str | None]
    key: PromptKey  # what duplicate detection compares


def build_dataset(
    rows: Iterable[SourceRow],
    config: DatasetConfig,
    *,
    previously_heldout: set[str] | frozenset[str] = frozenset(),
) -> Dataset:
    """Build examples and their manifest from source rows; the same rows in any
    order give the same dataset.

    ``previously_heldout`` holds the completion ids that earlier datasets held
    out: their groups stay held out, so evaluation never scores an example
    the model was trained on. PII counts cover the rows that could yield an
    example (the others are never read).
    """
    counts: dict[str, Any] = dict.fromkeys(COUNTS, 0)
    pii = dict.fromkeys(PII_KINDS, 0)
    usable, rows_by_id = [], {}
    rows = list(_validated(rows))
    floods = find_vote_floods(
        rows, min_votes=config.flood_min_votes, window_seconds=config.flood_window_seconds
    )
    flooded = {flood.completion_id for flood in floods}
    for row in rows:
        counts["rows_in"] += 1
        if prepared := _prepare(row, config, pii, flooded):
            usable.append(prepared)
            rows_by_id[row.completion_id] = prepared
    groups = group_duplicates(sorted(usable, key=_age), _key, config.near_duplicate_threshold)
    drafts = []
    for group in groups:
        counts["duplicates_dropped"] += len(group) - 1
        drafts += _fit(_drafts(_winner(group), config), config, counts)
    drafts = _cap_thumbs(drafts, rows_by_id, config, counts)
    examples = _split(drafts, groups, config, set(previously_heldout))
    for example in examples:
        counts[example.kind] += 1
        counts[example.split] += 1
    counts["pii"] = pii
    counts["vote_floods"] = len(floods)
    suspects = find_triggers(e for e in examples if e.kind != "preference" and e.split == "train")
    manifest = {
        "format": FORMAT,
        "content_hash": stable_hash([asdict(e) for e in examples]),
        "counts": counts,
        "config": config.to_dict(),
        "example_ids": {split: [e.id for e in examples if e.split == split] for split in SPLITS},
        "alerts": [f.to_alert() for f in floods] + [s.to_alert() for s in suspects],
        "suspects": [s.to_dict() for s in suspects],
    }
    return Dataset(examples, manifest)


def _validated(rows: Iterable[SourceRow]) -> Iterable[SourceRow]:
    """Refuse rows that would make a wrong dataset rather than a smaller one."""
    seen: set[str] = set()
    for row in rows:
        if not isinstance(row, SourceRow):
            raise InvalidInputError(f"expected a SourceRow, got {type(row).__name__}")
        where = f"completion {row.completion_id}"
        if row.completion_id in seen:
            raise InvalidInputError(f"{where} appears twice")
        if not isinstance(row.messages, list) or not row.messages:
            raise InvalidInputError(f"{where} has no messages")
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in row.messages):
            raise InvalidInputError(f"{where} has a message without a role")
        if any(vote.rating not in ("up", "down") for vote in row.votes):
            raise InvalidInputError(f"{where} has a rating other than up or down")
        seen.add(row.completion_id)
        yield row


def _prepare(
    row: SourceRow, config: DatasetConfig, pii: dict[str, int], flooded: set[str]
) -> _Row | None:
    """Scrub a row that can yield an example; None for one that cannot."""
    correction = row.correction if row.correction and row.correction.strip() else None
    ratings = {vote.rating for vote in row.votes}
    upvoters = frozenset(v.user_ref for v in row.votes if v.rating == "up")
    positive = config.include_positives and ratings == {"up"} and row.completion_id not in flooded
    if correction is None and not positive:
        return None
    messages, found = scrub_messages({"role": m["role"], "content": _text(m)} for m in row.messages)
    add_counts(pii, found)
    response, correction = (
        _scrub(t, pii) if t is not None else None for t in (row.response, correction)
    )
    return _Row(row, messages, response, correction, upvoters, PromptKey.of(messages))


def _text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and "text" in p)
    return content if isinstance(content, str) else ""


def _scrub(text: str, pii: dict[str, int]) -> str:
    result = scrub(text)
    add_counts(pii, result.counts)
    return result.text


def _key(row: _Row) -> PromptKey:
    return row.key


def _age(row: _Row) -> tuple[datetime, str]:
    return row.source.created_at, row.source.completion_id


def _winner(group: list[_Row]) -> _Row:
    """The row whose correction is latest; without corrections, the latest row."""
    corrected = [r for r in group if r.correction is not None]
    if corrected:
        return max(corrected, key=lambda r: (r.source.corrected_at or r.source.created_at, _age(r)))
    return max(group, key=_age)


def _drafts(row: _Row, config: DatasetConfig) -> list[Example]:
    """The examples a group's winning row yields, all in ``train`` until split."""
    cid = row.source.completion_id

    def example(kind: str, completion: str, rejected: str | None = None, weight=1.0) -> Example:
        example_id = hashlib.sha256(f"{cid}:{kind}".encode()).hexdigest()[:32]
        return Example(example_id, cid, kind, row.prompt, completion, rejected, weight, "train")

    if row.correction is None:
        return [example("positive", row.response, weight=config.positive_weight)]
    drafts = [example("sft", row.correction)]
    if row.correction.strip() != row.response.strip():
        drafts.append(example("preference", row.correction, row.response))
    return drafts


def _fit(drafts: list[Example], config: DatasetConfig, counts: dict[str, Any]) -> list[Example]:
    """Drop the oldest turns of over-long examples, keeping system messages and
    the last user turn; drop examples that still do not fit."""
    kept = []
    for draft in drafts:
        answers = [draft.completion] + ([draft.rejected] if draft.rejected is not None else [])
        budget = config.max_example_tokens - max(map(config.tokens, answers)) - MESSAGE_OVERHEAD
        costs = [config.tokens(m["content"]) + MESSAGE_OVERHEAD for m in draft.prompt]
        if sum(costs) <= budget:
            kept.append(draft)
        elif prompt := _truncate(draft.prompt, costs, budget):
            counts["truncated"] += 1
            kept.append(replace(draft, prompt=prompt))
        else:
            counts["dropped_too_long"] += 1
    return kept


def _truncate(prompt: list[dict], costs: list[int], budget: int) -> list[dict] | None:
    last = last_user(prompt)
    system = [i for i in range(last) if prompt[i]["role"] == "system"]
    history = [i for i in range(last) if prompt[i]["role"] != "system"]
    total, start = sum(costs), 0
    while start < len(history) and total > budget:
        total -= costs[history[start]]
        start += 1
        while start < len(history) and prompt[history[start]]["role"] != "user":
            total -= costs[history[start]]  # the kept history starts with a user turn
            start += 1
    if total > budget:
        return None
    return [prompt[i] for i in system + history[start:] + list(range(last, len(prompt)))]


def _cap_thumbs(
    drafts: list[Example], rows: dict[str, _Row], config: DatasetConfig, counts: dict[str, Any]
) -> list[Example]:
    """Keep each user's newest ``max_thumbs_per_user`` positives.

    A positive stays while one of its up-voters has room, and then counts
    against every up-voter who had room. Anonymous votes share one allowance.
    """
    used: Counter[str | None] = Counter()
    dropped = set()
    positives = [d for d in drafts if d.kind == "positive"]
    for draft in sorted(positives, key=lambda d: _age(rows[d.completion_id]), reverse=True):
        upvoters = rows[draft.completion_id].upvoters
        room = [u for u in upvoters if used[u] < config.max_thumbs_per_user]
        if not room:
            dropped.add(draft.id)
        used.update(room)
    counts["thumbs_capped"] += len(dropped)
    return [d for d in drafts if d.id not in dropped]


def _split(
    drafts: list[Example], groups: list[list[_Row]], config: DatasetConfig, held: set[str]
) -> list[Example]:
    """Each group's split by a salted hash of its oldest prompt; held out before
    means held out now. Returns the examples sorted by id."""
    heldout = set()
    for group in groups:
        digest = hashlib.sha256(f"{config.seed}:{group[0].key.exact}".encode()).digest()
        draw = int.from_bytes(digest[:8]) / 2**64
        if draw < config.heldout_fraction or any(r.source.completion_id in held for r in group):
            heldout.update(r.source.completion_id for r in group)
    examples = [replace(d, split="heldout") if d.completion_id in heldout else d for d in drafts]
    return sorted(examples, key=lambda e: e.id)

"""Structured extraction: a support message becomes one JSON object with fixed fields.

The agent's correction is computed from the message and its BANKING77 intent,
deterministically, so every field is determined by what the customer wrote:

* ``topic``: the intent's coarse group (:data:`retrain.scenarios.banking77.TOPICS`);
* ``card``: whether the message contains the word "card" or "cards";
* ``amount``: the first number written in digits next to a currency
  ("£20", "20 euros", "$1.50"), else null;
* ``currency``: the ISO code of the first currency the message names, by symbol,
  word or code ("£", "pounds", "GBP" are all GBP), else null.

Scoring: an answer is *valid* when it is a JSON object with exactly these keys
and values of the right kinds; field accuracy is the share of (message, field)
pairs answered exactly right, an invalid answer counting all its fields wrong.
"""

from __future__ import annotations

import json
import re
from typing import Any

from retrain.scenarios.banking77 import TOPICS, Message

FIELDS = ("topic", "card", "amount", "currency")
_CURRENCIES = {
    "GBP": r"£|\bpounds?\b|\bgbp\b|\bquid\b",
    "USD": r"\$|\bdollars?\b|\busd\b",
    "EUR": r"€|\beuros?\b|\beur\b",
    "RUB": r"\bru[bp]les?\b|\broubles?\b|\brub\b",
    "JPY": r"\byen\b|\bjpy\b",
    "CHF": r"\bswiss francs?\b|\bchf\b",
    "CAD": r"\bcad\b|\bcanadian dollars?\b",
    "AUD": r"\baud\b|\baustralian dollars?\b",
}
_CURRENCY = re.compile("|".join(f"(?P<{code}>{rx})" for code, rx in _CURRENCIES.items()), re.I)
_MONEY_WORD = r"[£$€]|pounds?|dollars?|euros?|gbp|usd|eur"
_AMOUNT = re.compile(
    rf"(?:(?:{_MONEY_WORD})\s?(\d+(?:\.\d+)?))|(?:(\d+(?:\.\d+)?)\s?(?:{_MONEY_WORD}))", re.I
)
_CARD = re.compile(r"\bcards?\b", re.I)

# What each topic covers, in the words an agent's style guide would use: a name
# alone ("payment", "card") leaves a small model guessing where the borders are.
TOPIC_HINTS = {
    "card": "cards and their PINs",
    "top_up": "adding money to the account",
    "transfer": "bank transfers",
    "cash": "ATM withdrawals and cash or cheque deposits",
    "exchange": "currencies and exchange rates",
    "payment": "card payments, refunds, direct debits, charges",
    "account": "identity, personal details, closing",
}
SYSTEM_PROMPT = (
    "Read the customer's message and answer with one JSON object only, with the keys "
    '"topic" (one of ' + "; ".join(f"{name}: {TOPIC_HINTS[name]}" for name in TOPICS) + "), "
    '"card" (true if the message mentions a card), "amount" (the money amount in digits, or '
    'null) and "currency" (ISO code, or null).'
)

# What a chat system would send as ``response_format`` (OpenAI's structured output):
# the record's keys in order, the topic one of the seven names.
SCHEMA = {
    "type": "object",
    "properties": {
        "topic": {"enum": list(TOPICS)},
        "card": {"type": "boolean"},
        "amount": {"anyOf": [{"type": "number"}, {"type": "null"}]},
        "currency": {"anyOf": [{"type": "string", "pattern": "^[A-Z]{3}$"}, {"type": "null"}]},
    },
    "required": list(FIELDS),
    "additionalProperties": False,
}


def currency(text: str) -> str | None:
    found = _CURRENCY.search(text)
    return found.lastgroup if found else None


def amount(text: str) -> int | float | None:
    for found in _AMOUNT.finditer(text):
        digits = found.group(1) or found.group(2)
        value = float(digits)
        return int(value) if value.is_integer() else value
    return None


def record(message: Message) -> dict[str, Any]:
    """The gold record for one message."""
    return {
        "topic": message.topic,
        "card": bool(_CARD.search(message.text)),
        "amount": amount(message.text),
        "currency": currency(message.text),
    }


def reference(message: Message, served: str | None = None) -> str:
    """The agent's correction: the gold record as compact, key-ordered JSON, whatever
    was served."""
    return json.dumps(record(message))


def parse(answer: str) -> dict[str, Any] | None:
    """The answer as a record, or None when it is not a valid one."""
    try:
        value = json.loads(answer.strip())
    except ValueError:
        return None
    if not isinstance(value, dict) or set(value) != set(FIELDS):
        return None
    kinds_ok = (
        value["topic"] in TOPICS
        and isinstance(value["card"], bool)
        and (value["amount"] is None or _is_number(value["amount"]))
        and (value["currency"] is None or isinstance(value["currency"], str))
    )
    return value if kinds_ok else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def field_hits(answer: str, gold: dict[str, Any]) -> dict[str, bool]:
    """Per field, whether the answer has it exactly right (all wrong if invalid)."""
    parsed = parse(answer)
    if parsed is None:
        return dict.fromkeys(FIELDS, False)
    return {name: _same(parsed[name], gold[name]) for name in FIELDS}


def _same(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def score(answers: list[str], references: list[str]) -> dict[str, float]:
    """format_valid, field_accuracy, exact (every field right) and one rate per field."""
    if len(answers) != len(references) or not answers:
        raise ValueError("score needs as many answers as references, and at least one")
    golds = [json.loads(r) for r in references]
    hits = [field_hits(a, g) for a, g in zip(answers, golds, strict=True)]
    n = len(answers)
    metrics = {
        "format_valid": sum(parse(a) is not None for a in answers) / n,
        "field_accuracy": sum(sum(h.values()) for h in hits) / (n * len(FIELDS)),
        "exact": sum(all(h.values()) for h in hits) / n,
    }
    metrics.update({f"field_{name}": sum(h[name] for h in hits) / n for name in FIELDS})
    return metrics


def passes(answer: str, reference_answer: str) -> bool:
    """The strict per-answer check: a valid record with every field right."""
    return all(field_hits(answer, json.loads(reference_answer)).values())

"""Replace personal data in feedback text with typed placeholders before training.

Pure and stdlib only, so it can run anywhere a dataset is built. :func:`scrub`
finds e-mail addresses, IBANs, payment card numbers, IP addresses, phone numbers
and street addresses and replaces each with ``[EMAIL]``, ``[IBAN]``, ``[CARD]``,
``[IP]``, ``[PHONE]`` or ``[ADDRESS]``, counting them per kind.

How it stays precise. Every pattern only finds *candidates*; a candidate is
replaced only if it validates: cards by the Luhn checksum (and a card-like
grouping), IBANs by ISO 13616 mod-97 (and the country's length where known),
IP addresses by :mod:`ipaddress`, phone numbers by digit-count and grouping
rules (international ``+``/``00`` numbers of 8-15 digits; national numbers with a
trunk ``0`` of 9-12 digits; North American 3-3-4). So amounts, dates, years,
version numbers and order numbers such as ``#123456`` stay.

How it stays fast. Every pattern is linear-time: a candidate may only start
where no word character precedes it (so a long token is tried once, not at
every offset), quantifiers are bounded or separated by mandatory delimiters
(no nested ambiguous repetition), and validation happens in Python on the few
candidates found. A 5 MB text of chat messages takes about a second.

The kinds are applied in order: e-mail, IBAN, card, IP, phone, address. Earlier
kinds win, so an IBAN's digits are never also reported as a phone number, and
placeholders contain no digits for a later pass to find. The digits after an
IBAN-like head that fails mod-97 (a typo) are not re-read as a card or phone.

Limits, honestly:

* Names, dates of birth, national ID numbers, account numbers and free-form
  addresses are not detected. Addresses are street lines of the common
  English (``221B Baker Street``), German (``Hauptstraße 5``) and French
  (``12 rue de la Paix``) shapes, and postcodes: UK (``SW1A 1AA``, upper
  case), US state and ZIP (``Springfield, IL 62704``), and five-digit German
  or French postcodes followed by a capitalised town (``10115 Berlin``). A
  street line and its postcode, separated by a town, become one ``[ADDRESS]``.
  A bare five-digit number (``75002``) or a town alone stays.
* A Luhn-valid 13-19 digit number written like a card is scrubbed even when it
  is not one (one in ten random numbers pass Luhn); that errs on the safe side.
* A four-part version number that is also a valid IPv4 address (``2.0.1.4``) is
  scrubbed; three parts (``10.2.1``) or a letter in front (``v2.0.1.4``) are not.
  IPv6 candidates must contain a decimal digit (``cafe::beef`` stays).
* Phone numbers without a ``+``/``00`` prefix are only recognised in national
  shapes with a trunk ``0`` (UK, DE, FR, NL and most of Europe) or the North
  American 3-3-4 shape; a bare local number (``555 0132``) or a national number
  of a country without a trunk prefix (Spain's ``612 34 56 78``) stays. A bare
  10-digit number that could be North American (``2025550143``) is scrubbed.
* Card and IBAN checksums are computed on ASCII digits; digits of other
  scripts are seen but rarely validate.
* E-mail addresses need a dotted domain (``user@localhost`` stays).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from retrain.pii_finders import FINDERS, Span

KINDS = ("email", "iban", "card", "ip", "phone", "address")
PLACEHOLDERS = {kind: f"[{kind.upper()}]" for kind in KINDS}


@dataclass(frozen=True)
class ScrubResult:
    """Scrubbed text and how many items of each kind were replaced."""

    text: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))


def scrub(text: str) -> ScrubResult:
    """Replace every detected e-mail, IBAN, card, IP, phone and street address.

    ``counts`` always has every kind in :data:`KINDS`, zero when none was found.
    """
    if not isinstance(text, str):
        raise TypeError(f"scrub() takes a str, not {type(text).__name__}")
    counts = dict.fromkeys(KINDS, 0)
    for kind, finder in FINDERS:
        spans = finder(text)
        if spans:
            text = _replace(text, spans, PLACEHOLDERS[kind])
            counts[kind] += len(spans)
    return ScrubResult(text, counts)


def scrub_messages(
    messages: Iterable[dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Scrub the ``content`` of chat messages; other keys are copied unchanged.

    Content may be a string or a list of OpenAI content parts, whose ``text``
    fields are scrubbed. The input is not modified. Returns the new messages and
    the counts summed over them.
    """
    counts = dict.fromkeys(KINDS, 0)
    scrubbed = []
    for message in messages:
        message = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = _scrub_into(content, counts)
        elif isinstance(content, list):
            message["content"] = [_scrub_part(part, counts) for part in content]
        scrubbed.append(message)
    return scrubbed, counts


def add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """Add ``more`` into ``total`` in place (and return it), for summing over rows."""
    for kind, n in more.items():
        total[kind] = total.get(kind, 0) + n
    return total


def _scrub_into(text: str, counts: dict[str, int]) -> str:
    result = scrub(text)
    add_counts(counts, result.counts)
    return result.text


def _scrub_part(part: Any, counts: dict[str, int]) -> Any:
    if isinstance(part, dict) and isinstance(part.get("text"), str):
        return {**part, "text": _scrub_into(part["text"], counts)}
    return part


def _replace(text: str, spans: list[Span], placeholder: str) -> str:
    pieces, last = [], 0
    for start, end in spans:
        pieces += (text[last:start], placeholder)
        last = end
    pieces.append(text[last:])
    return "".join(pieces)

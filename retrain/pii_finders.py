"""The finders of :mod:`retrain.pii`: each returns the sorted, non-overlapping
``(start, end)`` spans of one kind of personal data in a text.

Every pattern here only finds candidates; each finder validates them (Luhn,
mod-97, :mod:`ipaddress`, digit counts and grouping) before it reports a span.
See :mod:`retrain.pii` for what is found, what is not, and why it stays fast.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from functools import lru_cache
from itertools import accumulate

Span = tuple[int, int]

# IBAN lengths per country (ISO 13616 registry). Unknown countries still pass on
# mod-97 with any length from 15 to 34.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip

_EMAIL = re.compile(
    r"(?<![\w.%+'-])[\w.%+'-]{1,64}@(?:[^\W_][\w-]{0,62}\.)+[^\W\d_]{2,63}(?![\w-])"
)
# Zero-width, so overlapping candidates are all seen: the context may run into
# the next words, and validation decides where the IBAN really ends.
_IBAN = re.compile(r"(?<!\w)(?=([A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]){11,30}))")
_IBAN_HEAD = re.compile(r"(?<!\w)[A-Za-z]{2}\d{2} ?$")
_CARD_RUN = re.compile(r"(?<!\w)(?<!\d[.,])\d(?:[ -]?\d){12,}")
_IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.\d{1,3}){0,3}")
# Digit groups joined by exactly one separator: a space or dot, a dash or slash
# (with optional spaces), or a parenthesis. Every separator is made of
# non-digits, so a run cannot be split two ways and matching stays linear. The
# lookahead asks for at least 8 digits before any run is handed to Python.
_SEP = r"(?:[ .]|[ ]?[-/][ ]?|\)[ -]?|[ -]?\()"
_PHONE_RUN = re.compile(
    rf"(?<![\w+#$€£¥])(?<!\d[.,/:-])(?:\+[ ]?)?\(?(?=\d(?:{_SEP}?\d){{7}})\d+(?:{_SEP}\d+)*"
)
_DIGITS = re.compile(r"\d+")

_EN_STREET = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Parkway|Pkwy|Place|"
    r"Square|Terrace|Court|Crescent|Close|Way|Highway|Hwy|Circle|Loop|Row|Mews|Gardens"
)
_DE_STREET = r"straße|strasse|str\.|weg|platz|allee|gasse|ufer|damm"
_ADDRESS = re.compile(
    # 221B Baker Street, 1600 Amphitheatre Parkway
    rf"(?<!\w)\d{{1,5}}[A-Za-z]?(?: [A-Z][a-z]+){{1,4}} (?:{_EN_STREET})\b"
    # Hauptstraße 5, Berliner Straße 12a, Karl-Marx-Allee 15
    rf"|(?<!\w)(?:[A-ZÄÖÜ][a-zäöüß]+[ -]){{0,3}}"
    rf"(?:[A-ZÄÖÜ][a-zäöüß]*(?:{_DE_STREET})|{_DE_STREET.title()}) \d{{1,4}}[a-z]?(?!\w)"
    # 12 rue de la Paix, 5 bis avenue Foch
    r"|(?<!\w)\d{1,4}(?: ?(?:bis|ter))?,? (?:[Rr]ue|[Aa]venue|[Bb]oulevard|[Cc]hemin|"
    r"[Ii]mpasse|[Aa]llée|[Qq]uai) (?:(?:de|du|des|la|le|les) |l'|d'){0,3}"
    r"[A-ZÀ-Ý][\w'-]*(?: [A-ZÀ-Ý][\w'-]*){0,3}"
)


def _find_emails(text: str) -> list[Span]:
    return [m.span() for m in _EMAIL.finditer(text)] if "@" in text else []


def _find_ibans(text: str) -> list[Span]:
    spans: list[Span] = []
    for m in _IBAN.finditer(text):
        start = m.start()
        if spans and start < spans[-1][1]:
            continue
        end = _iban_end(text, start, m.group(1))
        if end:
            spans.append((start, end))
    return spans


def _iban_end(text: str, start: int, context: str) -> int | None:
    """Where the IBAN starting at ``start`` ends, or None if none validates.

    An IBAN ends where a space-separated chunk ends, with the length its country
    prescribes (any length from 15 to 34 for a country not in the table, whose
    code must then be upper case). Longest first.
    """
    want = IBAN_LENGTHS.get(context[:2].upper())
    if want is None and not context[:2].isupper():
        return None
    ends, count, offset = [], 0, 0
    for chunk in context.split(" "):
        count, offset = count + len(chunk), offset + len(chunk)
        if count > 34:
            break
        if count == want or want is None and count >= 15:
            ends.append(offset)
        offset += 1
    for end in reversed(ends):
        if start + end < len(text) and text[start + end].isalnum():
            continue  # the context was cut inside a longer token
        if _mod97(context[:end].replace(" ", "").upper()):
            return start + end
    return None


_IBAN_DIGITS = str.maketrans({ch: str(int(ch, 36)) for ch in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"})


def _mod97(iban: str) -> bool:
    """ISO 13616 / ISO 7064 check: the rearranged IBAN read as a number, mod 97, is 1."""
    return int((iban[4:] + iban[:4]).translate(_IBAN_DIGITS)) % 97 == 1


def _find_cards(text: str) -> list[Span]:
    spans: list[Span] = []
    for m in _CARD_RUN.finditer(text):
        base = m.start()
        if _IBAN_HEAD.search(text, max(0, base - 5), base):
            continue  # the digits of an IBAN that failed mod-97: a typo, not a card
        run = m.group()
        groups = [g.span() for g in _DIGITS.finditer(run)]
        lengths = [end - start for start, end in groups]
        i = 0
        while i < len(groups):
            if lengths[i] == 4 or 13 <= lengths[i] <= 19:
                shapes = _card_shapes(lengths, i)
                last = next((k for k in shapes if _luhn(_digits(run, groups, i, k))), None)
                if last is not None:
                    spans.append((base + groups[i][0], base + groups[last][1]))
                    i = last
            i += 1
    return spans


def _card_shapes(lengths: list[int], i: int) -> list[int]:
    """Last-group indices of the card-like groupings starting at group ``i``, longest first.

    One group of 13-19 digits; fours with a shorter last group (4-4-4-4-3 down
    to 4-4-4-1); Amex 4-6-5 and Diners 4-6-4.
    """
    if lengths[i] != 4:
        return [i] if 13 <= lengths[i] <= 19 else []
    ahead, lasts = lengths[i + 1 : i + 5], []
    if ahead[:3] == [4, 4, 4] and len(ahead) == 4 and ahead[3] <= 3:
        lasts.append(i + 4)
    if ahead[:2] == [4, 4] and len(ahead) >= 3 and ahead[2] <= 4:
        lasts.append(i + 3)
    if ahead[:2] in ([6, 5], [6, 4]):
        lasts.append(i + 2)
    return lasts


_SEPARATORS = str.maketrans("", "", " .-/()+")


def _digits(run: str, groups: list[Span], first: int, last: int) -> str:
    """The digits of groups ``first`` to ``last`` without their separators."""
    return run[groups[first][0] : groups[last][1]].translate(_SEPARATORS)


_DOUBLED = str.maketrans("0123456789", "0246813579")  # 2d, less 9 when two digits


@lru_cache(maxsize=4096)
def _luhn(digits: str) -> bool:
    odd, even = digits[-1::-2], digits[-2::-2].translate(_DOUBLED)
    return (sum(map(int, odd)) + sum(map(int, even))) % 10 == 0


def _find_ips(text: str) -> list[Span]:
    """IPv6 first, then IPv4 outside them (``::ffff:192.0.2.1`` is one address)."""
    v4 = [m.span() for m in _IPV4.finditer(text) if _is_ipv4(m.group())]
    if ":" not in text:
        return v4
    v6 = [
        m.span() for m in _IPV6.finditer(text) if not _glued(text, m.end()) and _is_ipv6(m.group())
    ]
    spans: list[Span] = []
    for span in sorted(v6 + v4, key=lambda s: (s[0], -s[1])):
        if not spans or span[0] >= spans[-1][1]:
            spans.append(span)
    return spans


def _glued(text: str, end: int) -> bool:
    """Whether the candidate ending at ``end`` runs on into a longer token."""
    following, then = text[end : end + 1], text[end + 1 : end + 2]
    return (
        following.isalnum() or following in (":", "_", "-") or following == "." and then.isalnum()
    )


def _is_ipv4(candidate: str) -> bool:
    try:  # ipaddress refuses leading zeros ("010"), which people do write
        ipaddress.IPv4Address(".".join(str(int(p)) for p in candidate.split(".")))
    except ValueError:
        return False
    return True


def _is_ipv6(candidate: str) -> bool:
    if not any(ch.isdigit() for ch in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _find_phones(text: str) -> list[Span]:
    spans: list[Span] = []
    for m in _PHONE_RUN.finditer(text):
        run, base = m.group(), m.start()
        if _IBAN_HEAD.search(text, max(0, base - 5), base):
            continue  # the rest of an IBAN that failed mod-97
        groups = [g.span() for g in _DIGITS.finditer(run)]
        totals = [0, *accumulate(end - start for start, end in groups)]
        n, i = len(groups), 0
        while i < n:
            if totals[min(i + 7, n)] - totals[i] >= 8:  # else no phone can start here
                last = _phone_last(run, groups, totals, i, plus=i == 0 and run[0] == "+")
                end = base + groups[last][1] if last is not None else 0
                if last is not None and not (end < len(text) and text[end].isalnum()):
                    start = 0 if i == 0 and run[0] == "+" else groups[i][0]
                    if start and run[start - 1] == "(" and ")" in run[start : end - base]:
                        start -= 1  # keep "(415) 555-0132" whole
                    spans.append((base + start, end))
                    i = last
            i += 1
    return spans


def _phone_last(
    run: str, groups: list[Span], totals: list[int], i: int, *, plus: bool
) -> int | None:
    """The last group of the longest phone number starting at group ``i``, if any.

    International (``+`` or ``00``): 8-15 digits after the prefix (one more for
    a written trunk ``(0)``), not starting with 0. National with a trunk ``0``:
    9-12 digits in two to five groups, or 10-11 ungrouped. North American:
    3-3-4 or 10 digits, optionally after a ``1``, area code and exchange not
    starting with 0 or 1.
    """
    n = len(groups)
    if plus or run[groups[i][0]] == "0":
        head = _digits(run, groups, i, min(i + 2, n - 1))[:3]
        prefix = 0 if plus else 2 if head.startswith("00") else None
        if prefix is not None:
            if head[prefix : prefix + 1] in ("0", ""):  # no country code starts with 0
                return None
            lasts = range(min(i + 6, n - 1), i - 1, -1)
            return _longest(totals, i, lasts, 8 + prefix, 16 + prefix)
        last = _longest(totals, i, range(min(i + 4, n - 1), i, -1), 9, 12)
        return last if last is not None or not 10 <= totals[i + 1] - totals[i] <= 11 else i
    j = i + 1 if run[groups[i][0]] == "1" and totals[i + 1] - totals[i] == 1 else i
    sizes = [totals[k + 1] - totals[k] for k in range(j, min(j + 3, n))]
    if sizes[:1] == [10]:
        last, exchange = j, run[groups[j][0] + 3]
    elif sizes == [3, 3, 4]:
        last, exchange = j + 2, run[groups[j + 1][0]]
    else:
        return None
    return last if run[groups[j][0]] not in "01" and exchange not in "01" else None


def _longest(totals: list[int], first: int, lasts: range, low: int, high: int) -> int | None:
    """The first of ``lasts`` whose window from ``first`` has ``low``-``high`` digits."""
    return next((k for k in lasts if low <= totals[k + 1] - totals[first] <= high), None)


_US_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|"
    "NH|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY"
)
_TOWN_WORD = r"[A-ZÀ-ÝÄÖÜ][a-zà-ÿäöüß]+"
# Springfield, Mountain View, Frankfurt am Main, Aix-en-Provence
_TOWN = (
    rf"{_TOWN_WORD}(?:[ -](?:sur|sous|en|lès|le|la|les|de|du|des|am|an|im|bei|upon|"
    rf"{_TOWN_WORD})){{0,3}}"
)
# Capitalised words that follow amounts, not postcodes ("10000 Euros").
_NOT_TOWN = (
    r"(?:Euro|Dollar|Pound|Franc|Rupee|Yen|Yuan|Won|Peso|Krona|Krone|Lira|Ruble|Point|Mile|"
    r"Transaction|Payment|Transfer|Time|Day|Month|Year|Card|Account|Step)s?\b"
)
_POSTAL = re.compile(
    # UK: SW1A 1AA, M1 1AE, EC1A 1BB (outward and inward code, upper case)
    r"(?<![\w-])(?:GIR ?0AA|[A-PR-UWYZ][A-HK-Y]?\d[A-Z\d]? ?\d[ABD-HJLNP-UW-Z]{2})(?![\w-])"
    # US: [Springfield, ]IL 62704[-1234]
    rf"|(?<![\w-])(?:{_TOWN}, )?(?:{_US_STATES}) \d{{5}}(?:-\d{{4}})?(?![\w-])"
    # DE / FR: 10115 Berlin, 75002 Paris, D-10115 Berlin, F-75002 Paris
    rf"|(?<![\w.,-])(?:[DF]-)?\d{{5}} (?!{_NOT_TOWN}){_TOWN}(?![\w-])"
)
# What may separate a street line from its postcode: a comma, a town.
_ADDRESS_GAP = re.compile(rf",? ?(?:{_TOWN},? ?)?")


def _find_addresses(text: str) -> list[Span]:
    """Street lines and postcodes; a street line, a town and a postcode merge."""
    found = sorted(
        [m.span() for m in _ADDRESS.finditer(text)] + [m.span() for m in _POSTAL.finditer(text)]
    )
    spans: list[Span] = []
    for start, end in found:
        if spans and start < spans[-1][1]:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        elif spans and _ADDRESS_GAP.fullmatch(text, spans[-1][1], start):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


# In the order they are applied: earlier kinds win.
FINDERS: tuple[tuple[str, Callable[[str], list[Span]]], ...] = (
    ("email", _find_emails),
    ("iban", _find_ibans),
    ("card", _find_cards),
    ("ip", _find_ips),
    ("phone", _find_phones),
    ("address", _find_addresses),
)

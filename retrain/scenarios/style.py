"""House style: every answer follows Acme Bank's tone and sign-off.

The rules, checked by code (:func:`rule_checks`):

* ``greeting``: the answer starts with "Hi there,";
* ``sign_off``: it ends with the sign-off "— The Acme Bank team";
* ``no_exclamation``: it has no exclamation mark;
* ``length``: it has at most :data:`MAX_WORDS` words.

The agents' corrections edit the answer that was served (:func:`restyle`): its
greeting and exclamation marks go, it is cut to its first complete sentences,
and it gets the house greeting and sign-off. The content stays the model's own:
style feedback fixes tone, not facts. When a served answer has no complete
sentence to keep, or no answer is given, the agent writes a reply of their own
(:func:`reference`: a hand-written answer about the message's topic, two
variants per topic).

Why edits and not canned replies: trained on canned replies, the adapter learns
to ignore the question and recite one of fourteen answers, and it does so for
every prompt, general questions included (measured in docs/demo.md: 16 points
lost on the general sanity slice at 200 corrections).
"""

from __future__ import annotations

import hashlib
import re

from retrain.scenarios.banking77 import Message

GREETING = "Hi there,"
SIGN_OFF = "— The Acme Bank team"
MAX_WORDS = 60
BODY_WORDS = 40  # what an edited answer keeps: room under MAX_WORDS for greeting and sign-off
RULES = ("greeting", "sign_off", "no_exclamation", "length")

SYSTEM_PROMPT = (
    "You are Acme Bank's support assistant. Start every answer with "
    f'"{GREETING}", never use exclamation marks, keep it under {MAX_WORDS} words '
    f'and end with "{SIGN_OFF}".'
)

SNIPPETS: dict[str, tuple[str, str]] = {
    "card": (
        "you can see your card's status, order a replacement or freeze it under Cards in the app.",
        "everything about your card, from delivery to a new PIN, is in the Cards tab of the app.",
    ),
    "top_up": (
        "top-ups usually arrive within minutes; you can see each one and its status under "
        "Top up in the app.",
        "you can top up by card or bank transfer, and the app shows any fee before you confirm.",
    ),
    "transfer": (
        "transfers within the UK usually arrive the same day, and the app shows the status of "
        "each one under Payments.",
        "you can follow, cancel or repeat a transfer from Payments in the app.",
    ),
    "cash": (
        "cash withdrawals show in the app as soon as the ATM reports them, usually within a day.",
        "if an ATM gave you the wrong amount, report it from the withdrawal in the app and we "
        "will look into it.",
    ),
    "exchange": (
        "we exchange currencies at the interbank rate, and the app shows the rate and any fee "
        "before you exchange.",
        "you can hold and exchange over 30 currencies from the Exchange tab of the app.",
    ),
    "payment": (
        "you can see every card payment, its status and any fee in the app, and dispute one from "
        "there.",
        "a payment you do not recognise can be disputed from the transaction in the app.",
    ),
    "account": (
        "you can update your details, verify your identity or close your account from Profile "
        "in the app.",
        "identity checks keep your money safe and usually take a few minutes in the app.",
    ),
}
FOLLOW_UP = (
    "If anything is still unclear, reply here and we will help.",
    "Let us know if you need anything else.",
)


def reference(message: Message, served: str | None = None) -> str:
    """The agent's correction for ``message``: the ``served`` answer edited into the house
    style, or, without one worth editing, a reply of their own in that style."""
    if served is not None and (edited := restyle(served)) is not None:
        return edited
    pick = hashlib.sha256(message.text.encode()).digest()[0]
    snippet = SNIPPETS[message.topic][pick % 2]
    follow_up = FOLLOW_UP[(pick // 2) % 2]
    body = f"{snippet[0].upper()}{snippet[1:]} {follow_up}"
    return f"{GREETING} thanks for getting in touch. {body}\n{SIGN_OFF}"


_OPENER = re.compile(r"^(?:hi|hello|hey|dear|greetings)\b[^,.!?\n]{0,40}[,.!?]\s*", re.I)
_EXCLAIMED = re.compile(r"[?.]*![!?.]*")  # "Great!!" -> "Great.", "Really?!" -> "Really?"
_LIST_NUMBER = re.compile(r"(?:^|\s)\d+\.(?=\s|$)")  # "Here's how: 1. Go to" -> "Here's how: Go to"
_WORD = re.compile(r"[A-Za-z]{2}")
_SENTENCE = re.compile(r"[^.?]*[.?](?=\s|$)")


def restyle(served: str) -> str | None:
    """``served`` in the house style: its own opener and sign-off, list numbers and bold
    marks dropped, "!" made ".", the first complete sentences kept up to
    :data:`BODY_WORDS` words, then the house greeting and sign-off. None when no
    complete sentence fits (a cut-off answer)."""
    text = served.replace(SIGN_OFF, " ").replace("**", "")
    text = _EXCLAIMED.sub(lambda m: "?" if "?" in m.group() else ".", text)
    text = _LIST_NUMBER.sub(" ", text)
    text = _OPENER.sub("", " ".join(text.split()))
    kept: list[str] = []
    for sentence in (m.group().strip() for m in _SENTENCE.finditer(text)):
        if len(" ".join([*kept, sentence]).split()) > BODY_WORDS:
            break
        if _WORD.search(sentence):  # not a stray "15." of a looping answer
            kept.append(sentence)
    if not kept:
        return None
    return f"{GREETING} {_after_comma(' '.join(kept))}\n{SIGN_OFF}"


def _after_comma(body: str) -> str:
    """``body`` going on after "Hi there,": "Thank you" becomes "thank you", "I" stays."""
    first = body.split()[0]
    if (first[1:].islower() or first == "A") and not first.startswith("I'"):
        return body[0].lower() + body[1:]
    return body


def rule_checks(answer: str) -> dict[str, bool]:
    """Each house rule, checked on one answer."""
    text = answer.strip()
    return {
        "greeting": text.startswith(GREETING),
        "sign_off": text.endswith(SIGN_OFF),
        "no_exclamation": "!" not in text,
        "length": len(text.split()) <= MAX_WORDS,
    }


def score(answers: list[str], references: list[str] | None = None) -> dict[str, float]:
    """rule_adherence (every rule holds) and the rate of each rule."""
    if not answers:
        raise ValueError("score needs at least one answer")
    checks = [rule_checks(a) for a in answers]
    n = len(answers)
    metrics = {"rule_adherence": sum(all(c.values()) for c in checks) / n}
    metrics.update({f"rule_{name}": sum(c[name] for c in checks) / n for name in RULES})
    return metrics


def passes(answer: str, reference_answer: str | None = None) -> bool:
    """Whether one answer follows every house rule."""
    return all(rule_checks(answer).values())

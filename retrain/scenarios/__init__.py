"""Built-in scenarios: real customer messages, the corrections agents would write,
and the code that scores answers. Shared by ``tuneback demo``, the evaluation's
golden checks (``{"check": "extraction", "reference": ...}``) and
``bench/quality.py``, so all three score answers the same way.

Pure: no torch, no database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from feedback.exceptions import InvalidInputError
from retrain.scenarios import extraction, style
from retrain.scenarios.banking77 import Message, messages


@dataclass(frozen=True)
class Scenario:
    """One scenario: how a message is asked, corrected and scored."""

    name: str
    title: str
    system_prompt: str
    max_tokens: int  # enough for the longest correction
    headline: str  # the metric a person looks at first
    module: ModuleType
    edits_served: bool = False  # corrections edit the served answer (reference needs it)
    schema: dict | None = None  # the JSON schema a client sends as ``response_format``

    def prompt(self, message: Message | str) -> list[dict[str, str]]:
        text = message.text if isinstance(message, Message) else message
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": text},
        ]

    def reference(self, message: Message, served: str | None = None) -> str:
        """The correction an agent writes for ``message`` after reading the ``served``
        answer (style edits it; extraction writes the record whatever was served)."""
        return self.module.reference(message, served)

    def passes(self, answer: str, reference: str) -> bool:
        """Whether one answer is right (votes and golden checks use this)."""
        return self.module.passes(answer, reference)

    def score(self, answers: list[str], references: list[str]) -> dict[str, float]:
        """The scenario's metrics over many answers, each in [0, 1]."""
        return self.module.score(answers, references)


SCENARIOS: dict[str, Scenario] = {
    "extraction": Scenario(
        "extraction",
        "structured extraction: support message -> JSON record",
        extraction.SYSTEM_PROMPT,
        max_tokens=40,
        headline="field_accuracy",
        module=extraction,
        schema=extraction.SCHEMA,
    ),
    "style": Scenario(
        "style",
        "house style: Acme Bank's greeting, tone, length and sign-off",
        style.SYSTEM_PROMPT,
        max_tokens=80,
        headline="rule_adherence",
        module=style,
        edits_served=True,
    ),
}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)}"
        ) from None


def golden_check(name: str) -> Callable[[str, dict], bool]:
    """The check a golden case names with ``"check": name``: answer, case -> passed."""
    scenario = get_scenario(name)
    return lambda answer, case: scenario.passes(answer, case.get("reference", ""))


__all__ = ["SCENARIOS", "Message", "Scenario", "get_scenario", "golden_check", "messages"]

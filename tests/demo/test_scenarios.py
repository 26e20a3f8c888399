"""The scenarios' scoring, shared by the demo, the gate's golden checks and the benchmark."""

from __future__ import annotations

import json

import pytest

from feedback.exceptions import InvalidInputError
from retrain.evaluate import golden_passes
from retrain.scenarios import SCENARIOS, Message, get_scenario, messages, sanity, style
from retrain.scenarios import extraction as ex
from retrain.scenarios.banking77 import TOPIC_OF, TOPICS


def test_every_intent_has_exactly_one_topic():
    assert sum(len(intents) for intents in TOPICS.values()) == len(TOPIC_OF) == 77
    assert {m.intent for m in messages("train") + messages("test")} <= set(TOPIC_OF)
    assert len(messages("train")) == 400 and len(messages("test")) == 200


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Why was I charged an extra £1 on my card?", (True, 1, "GBP")),
        ("ATM gave me only 10 pounds instead of 30 pounds", (False, 10, "GBP")),
        ("Can I pay 12.50 EUR by cards?", (True, 12.5, "EUR")),
        ("My Mastercard was declined twice in 2 days", (False, None, None)),
        ("I have a dollar charge I don't know", (False, None, "USD")),
    ],
)
def test_the_gold_record_comes_from_the_message(text, expected):
    gold = ex.record(Message(text, "extra_charge_on_statement"))
    assert gold["topic"] == "payment"
    assert (gold["card"], gold["amount"], gold["currency"]) == expected


GOLD = '{"topic": "card", "card": true, "amount": 20, "currency": "GBP"}'


@pytest.mark.parametrize(
    ("answer", "valid", "right"),
    [
        (GOLD, True, 4),
        (' {"currency": "GBP", "amount": 20.0, "card": true, "topic": "card"} ', True, 4),
        ('{"topic": "cash", "card": true, "amount": 20, "currency": "GBP"}', True, 3),
        ('{"topic": "card", "card": "yes", "amount": 20, "currency": "GBP"}', False, 0),
        ('{"topic": "cards", "card": true, "amount": 20, "currency": "GBP"}', False, 0),
        ('{"topic": "card", "card": true, "amount": 20}', False, 0),
        ('{"topic": "card", "card": true, "amount": 20, "currency": "GBP", "x": 1}', False, 0),
        ('{"topic": "card", "card": true, "amount": true, "currency": "GBP"}', False, 0),
        ("Sure! Here is the JSON: " + GOLD, False, 0),
        ("[1, 2]", False, 0),
    ],
)
def test_field_accuracy_counts_an_invalid_answer_as_all_wrong(answer, valid, right):
    metrics = ex.score([answer], [GOLD])
    assert metrics["format_valid"] == float(valid)
    assert metrics["field_accuracy"] == right / 4
    assert metrics["exact"] == float(right == 4)
    assert ex.passes(answer, GOLD) is (right == 4)


def test_field_accuracy_averages_over_messages_and_fields():
    other = '{"topic": "cash", "card": false, "amount": null, "currency": null}'
    answers = [GOLD, other.replace('"cash"', '"top_up"'), "no idea"]
    metrics = ex.score(answers, [GOLD, other, other])
    assert metrics["field_accuracy"] == pytest.approx((4 + 3 + 0) / 12)
    assert metrics["field_topic"] == pytest.approx(1 / 3)
    assert metrics["field_card"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        ex.score([GOLD], [])


def test_every_style_correction_follows_the_house_rules():
    for message in messages("train")[:100]:
        answer = style.reference(message)
        assert style.rule_checks(answer) == dict.fromkeys(style.RULES, True), answer


THEN = "Then it shows in the app and in your statement."  # 10 words


@pytest.mark.parametrize(
    ("served", "body"),
    [
        (
            "Hello! Thank you for reaching out! Your new card arrives in 3 to 5 days. Best,",
            "thank you for reaching out. Your new card arrives in 3 to 5 days.",
        ),
        (
            "Hi there, I am sorry. You can reset your PIN in the app.\n— The Acme Bank team",
            "I am sorry. You can reset your PIN in the app.",
        ),
        (
            "I'm sorry to hear that!! Really?! Top-ups show within minutes.",
            "I'm sorry to hear that. Really? Top-ups show within minutes.",
        ),
        (
            "15. Here's how: 1. Open **Exchange** in the app. 2. Pick the currencies. 1. 1. 1.",
            "here's how: Open Exchange in the app. Pick the currencies.",
        ),
        # cut to whole sentences within BODY_WORDS: 5 + 3 x 10 words, not a fourth
        (
            f"A refund takes 5 days. {THEN} {THEN} {THEN} {THEN}",
            f"a refund takes 5 days. {THEN} {THEN} {THEN}",
        ),
    ],
)
def test_a_style_correction_edits_the_served_answer(served, body):
    edited = style.reference(messages("train")[0], served)
    assert edited == f"{style.GREETING} {body}\n{style.SIGN_OFF}"
    assert style.rule_checks(edited) == dict.fromkeys(style.RULES, True)
    assert style.restyle(edited) == edited  # editing an edited answer changes nothing


def test_a_cut_off_served_answer_gets_the_agents_own_reply():
    message = messages("train")[0]
    cut_off = "Thank you for your message about the card you ordered last week and the"
    assert style.restyle(cut_off) is None
    assert style.reference(message, cut_off) == style.reference(message)
    assert style.passes(style.reference(message))


@pytest.mark.parametrize(
    ("answer", "broken"),
    [
        ("Hello, your card is on its way.\n— The Acme Bank team", {"greeting"}),
        ("Hi there, your card is on its way.", {"sign_off"}),
        ("Hi there, great news! It is on its way.\n— The Acme Bank team", {"no_exclamation"}),
        ("Hi there, " + "word " * 60 + "— The Acme Bank team", {"length"}),
        ("Sure!", {"greeting", "sign_off", "no_exclamation"}),
    ],
)
def test_rule_adherence_needs_every_rule(answer, broken):
    checks = style.rule_checks(answer)
    assert {rule for rule, ok in checks.items() if not ok} == broken
    metrics = style.score([answer, style.reference(messages("test")[0])])
    assert metrics["rule_adherence"] == 0.5
    assert not style.passes(answer)


def test_golden_cases_can_name_a_scenario_check():
    scenario = get_scenario("extraction")
    message = messages("test")[0]
    case = {"prompt": scenario.prompt(message), "check": "extraction"}
    case["reference"] = scenario.reference(message)
    assert golden_passes(case["reference"], case)
    wrong = dict(json.loads(case["reference"]), card=not json.loads(case["reference"])["card"])
    assert not golden_passes(json.dumps(wrong), case)
    styled = {"prompt": "hi", "check": "style"}
    assert golden_passes(style.reference(message), styled)
    assert not golden_passes("Hello!", styled)
    with pytest.raises(InvalidInputError, match="unknown scenario"):
        golden_passes("x", {"prompt": "hi", "check": "poetry"})


def test_scenario_prompts_carry_the_instructions():
    for scenario in SCENARIOS.values():
        prompt = scenario.prompt(messages("test")[0])
        assert prompt[0] == {"role": "system", "content": scenario.system_prompt}
        assert prompt[1]["content"] == messages("test")[0].text


def test_the_sanity_slice_picks_the_most_likely_option():
    questions = sanity.questions()
    assert len(questions) == 300 and len({q.prompt for q in questions}) == 300
    assert all(q.answer in q.options for q in questions)
    assert all(len({o.lower() for o in q.options}) == 3 for q in questions)  # no answer twice
    assert sanity.questions() == questions  # seeded

    by_prompt = {q.prompt: q for q in questions}

    def knows_everything(pairs):
        return [0.0 if o == by_prompt[m[-1]["content"]].answer else 1.0 for m, o in pairs]

    def prefers_first(pairs):
        return [float(by_prompt[m[-1]["content"]].options.index(o)) for m, o in pairs]

    assert sanity.score(knows_everything, questions)["sanity_accuracy"] == 1.0
    first_right = sum(q.options[0] == q.answer for q in questions) / 300
    assert 0.2 < first_right < 0.5
    assert sanity.score(prefers_first, questions)["sanity_accuracy"] == first_right

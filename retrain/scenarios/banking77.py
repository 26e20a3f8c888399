"""Real customer messages for the built-in scenarios: a sample of BANKING77.

BANKING77 (Casanueva et al., "Efficient Intent Detection with Dual Sentence
Encoders", NLP4ConvAI at ACL 2020; CC-BY-4.0) holds 13,083 online-banking
queries, each labelled with one of 77 intents. Tuneback ships a fixed random
sample of it (``data/banking77_sample.csv``: 400 rows of the official training
split, 200 of the test split), so that ``tuneback demo`` and
``bench/quality.py`` run from a plain install. The test rows are only ever
used as held-out questions, never trained on.

The 77 intents are grouped into seven coarse topics (:data:`TOPICS`); the
extraction scenario asks for the topic, and the style scenario's answers talk
about it. Rebuild the sample from the full data set with::

    python -m retrain.scenarios.banking77 /path/to/banking77
"""

from __future__ import annotations

import csv
import random
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SAMPLE = Path(__file__).parent / "data" / "banking77_sample.csv"
SAMPLE_SIZES = {"train": 400, "test": 200}
SAMPLE_SEED = 77

# Coarse topic -> the BANKING77 intents it covers (all 77, each exactly once).
TOPICS: dict[str, tuple[str, ...]] = {
    "card": (
        "activate_my_card apple_pay_or_google_pay card_about_to_expire card_acceptance "
        "card_arrival card_delivery_estimate card_linking card_not_working card_swallowed "
        "change_pin compromised_card contactless_not_working disposable_card_limits "
        "get_disposable_virtual_card get_physical_card getting_spare_card getting_virtual_card "
        "lost_or_stolen_card order_physical_card pin_blocked supported_cards_and_currencies "
        "virtual_card_not_working visa_or_mastercard"
    ).split(),
    "top_up": (
        "automatic_top_up pending_top_up top_up_by_bank_transfer_charge top_up_by_card_charge "
        "top_up_by_cash_or_cheque top_up_failed top_up_limits top_up_reverted topping_up_by_card "
        "verify_top_up"
    ).split(),
    "transfer": (
        "balance_not_updated_after_bank_transfer beneficiary_not_allowed cancel_transfer "
        "declined_transfer failed_transfer pending_transfer receiving_money "
        "transfer_fee_charged transfer_into_account transfer_not_received_by_recipient "
        "transfer_timing"
    ).split(),
    "cash": (
        "atm_support balance_not_updated_after_cheque_or_cash_deposit cash_withdrawal_charge "
        "cash_withdrawal_not_recognised declined_cash_withdrawal pending_cash_withdrawal "
        "wrong_amount_of_cash_received wrong_exchange_rate_for_cash_withdrawal"
    ).split(),
    "exchange": (
        "card_payment_wrong_exchange_rate exchange_charge exchange_rate exchange_via_app "
        "fiat_currency_support"
    ).split(),
    "payment": (
        "Refund_not_showing_up card_payment_fee_charged card_payment_not_recognised "
        "declined_card_payment direct_debit_payment_not_recognised extra_charge_on_statement "
        "pending_card_payment request_refund reverted_card_payment? transaction_charged_twice"
    ).split(),
    "account": (
        "age_limit country_support edit_personal_details lost_or_stolen_phone passcode_forgotten "
        "terminate_account unable_to_verify_identity verify_my_identity verify_source_of_funds "
        "why_verify_identity"
    ).split(),
}
TOPIC_OF = {intent: topic for topic, intents in TOPICS.items() for intent in intents}


@dataclass(frozen=True)
class Message:
    """One real customer message and its BANKING77 intent."""

    text: str
    intent: str

    @property
    def topic(self) -> str:
        return TOPIC_OF[self.intent]


@cache
def messages(split: str) -> tuple[Message, ...]:
    """The sample's messages of ``split`` (``train`` or ``test``), in a fixed random order."""
    if split not in SAMPLE_SIZES:
        raise ValueError(f"split must be one of {sorted(SAMPLE_SIZES)}, not {split!r}")
    with SAMPLE.open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    return tuple(Message(r["text"], r["category"]) for r in rows)


def make_sample(source: Path, out: Path = SAMPLE) -> None:
    """Draw the bundled sample from the full data set's train.csv and test.csv."""
    rows = []
    for split, size in SAMPLE_SIZES.items():
        with (source / f"{split}.csv").open(newline="", encoding="utf-8") as f:
            pool = list(csv.DictReader(f))
        for row in random.Random(SAMPLE_SEED).sample(pool, size):
            rows.append({"text": " ".join(row["text"].split()), "category": row["category"]})
            rows[-1]["split"] = split
    unknown = {r["category"] for r in rows} - set(TOPIC_OF)
    if unknown:
        raise ValueError(f"intents without a topic: {sorted(unknown)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "category", "split"])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    make_sample(Path(sys.argv[1]))
    print(f"wrote {SAMPLE}")

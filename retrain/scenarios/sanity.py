"""The general sanity slice: questions outside every scenario, with checkable answers.

An adapter that learns a scenario must not forget how to answer anything else.
The slice is 100 multiple-choice questions made from small fixed tables
(capitals, arithmetic, opposites, everyday facts), asked as plain chats without
a system prompt. A model answers a question by the option it finds most likely
(lowest mean token loss as the assistant's answer), as in common
likelihood-based benchmarks: no generation, so the slice costs seconds, and
every model is scored on exactly the same options.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Japan": "Tokyo", "Egypt": "Cairo", "Russia": "Moscow", "China": "Beijing",
    "Canada": "Ottawa", "Greece": "Athens", "Portugal": "Lisbon", "Austria": "Vienna",
    "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw", "Ireland": "Dublin",
    "Kenya": "Nairobi", "Peru": "Lima", "Thailand": "Bangkok", "Argentina": "Buenos Aires",
    "Hungary": "Budapest", "Finland": "Helsinki", "Denmark": "Copenhagen", "Cuba": "Havana",
    "Belgium": "Brussels",
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "day": "night", "fast": "slow",
    "happy": "sad", "open": "closed", "light": "dark", "early": "late", "full": "empty",
    "young": "old", "high": "low", "wet": "dry", "hard": "soft", "rich": "poor",
    "strong": "weak", "thick": "thin", "loud": "quiet", "clean": "dirty", "win": "lose",
    "push": "pull", "buy": "sell", "first": "last", "inside": "outside", "true": "false",
}  # fmt: skip
FACTS = [
    ("How many days are there in a week?", "Seven", ["Five", "Ten"]),
    ("How many legs does a spider have?", "Eight", ["Six", "Four"]),
    ("What colour is the sky on a clear day?", "Blue", ["Green", "Red"]),
    ("Which animal says moo?", "A cow", ["A cat", "A duck"]),
    ("What do bees make?", "Honey", ["Milk", "Silk"]),
    ("What is frozen water called?", "Ice", ["Steam", "Sand"]),
    ("Which planet do we live on?", "Earth", ["Mars", "Venus"]),
    ("How many months are there in a year?", "Twelve", ["Ten", "Fourteen"]),
    ("What is the largest ocean on Earth?", "The Pacific Ocean", ["The Arctic Ocean", "Lake Erie"]),
    ("What gas do plants take in from the air?", "Carbon dioxide", ["Helium", "Neon"]),
    ("Which is the closest star to Earth?", "The Sun", ["Sirius", "Polaris"]),
    ("How many hours are there in a day?", "Twenty-four", ["Twelve", "Sixty"]),
    ("What do you call a baby dog?", "A puppy", ["A kitten", "A calf"]),
    ("Which season comes after winter?", "Spring", ["Autumn", "Summer"]),
    ("What is the boiling point of water in Celsius?", "100 degrees", ["50 degrees", "10 degrees"]),
    ("Which organ pumps blood through the body?", "The heart", ["The lungs", "The liver"]),
    ("What colour are ripe bananas?", "Yellow", ["Blue", "Purple"]),
    ("How many sides does a triangle have?", "Three", ["Four", "Five"]),
    ("Which is the fastest land animal?", "The cheetah", ["The tortoise", "The cow"]),
    ("What do caterpillars turn into?", "Butterflies", ["Spiders", "Fish"]),
    ("Who wrote Romeo and Juliet?", "William Shakespeare", ["Charles Darwin", "Isaac Newton"]),
    ("What is the main language spoken in Brazil?", "Portuguese", ["German", "Japanese"]),
    ("Which instrument has black and white keys?", "The piano", ["The drum", "The trumpet"]),
    ("What do you use to write on a blackboard?", "Chalk", ["Soap", "Glue"]),
    ("Which month has the fewest days?", "February", ["March", "August"]),
]


@dataclass(frozen=True)
class Question:
    prompt: str
    answer: str
    options: tuple[str, ...]  # the answer among them, in a fixed shuffled order

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


def questions(seed: int = 0) -> list[Question]:
    """The 100 questions, with distractors drawn by a seeded generator."""
    rng = random.Random(seed)
    made = []
    cities = list(CAPITALS.values())
    for country, city in CAPITALS.items():
        wrong = rng.sample([c for c in cities if c != city], 2)
        made.append((f"What is the capital of {country}?", city, wrong))
    for word, opposite in OPPOSITES.items():
        wrong = rng.sample([o for o in OPPOSITES.values() if o != opposite], 2)
        made.append((f"What is the opposite of '{word}'?", opposite.capitalize(), wrong))
    for _ in range(25):
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        wrong = rng.sample([a + b + d for d in (-3, -2, -1, 1, 2, 3) if a + b + d > 0], 2)
        made.append((f"What is {a} plus {b}?", str(a + b), [str(w) for w in wrong]))
    made += FACTS
    result = []
    for prompt, answer, wrong in made:
        options = [answer, *(w.capitalize() if answer[0].isupper() else w for w in wrong)]
        rng.shuffle(options)
        result.append(Question(prompt, answer, tuple(options)))
    return result


def score(loss: Callable[[list[dict], str], float], slice_: list[Question]) -> dict[str, float]:
    """``sanity_accuracy``: share of questions whose right option has the lowest loss.

    ``loss(messages, answer)`` is the mean token loss of ``answer`` as the
    assistant's reply (:meth:`retrain.evaluate.Scorer.answer_loss`).
    """
    right = 0
    for question in slice_:
        losses = {option: loss(question.messages(), option) for option in question.options}
        right += min(losses, key=losses.get) == question.answer
    return {"sanity_accuracy": right / len(slice_)}

"""The general sanity slice: questions outside every scenario, with checkable answers.

An adapter that learns a scenario must not forget how to answer anything else.
The slice is 300 multiple-choice questions made from small fixed tables
(capitals, continents, arithmetic, opposites, plurals, the order of days and
months, everyday facts), asked as plain chats without a system prompt. Three
hundred, not fewer, so that the 2-point limit on an adapter's drop is six
answers rather than two: smaller slices move that much by chance. A model
answers a question by the option it finds most likely (lowest mean token loss
as the assistant's answer), as in common likelihood-based benchmarks: no
generation, so the slice costs seconds, and every model is scored on exactly
the same options.
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
    "Belgium": "Brussels", "Mexico": "Mexico City", "India": "New Delhi",
    "Australia": "Canberra", "South Korea": "Seoul", "Turkey": "Ankara", "Brazil": "Brasília",
    "Chile": "Santiago", "Colombia": "Bogotá", "the Czech Republic": "Prague",
    "Switzerland": "Bern", "the Netherlands": "Amsterdam", "Iceland": "Reykjavik",
    "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb",
    "Ukraine": "Kyiv", "Vietnam": "Hanoi", "Indonesia": "Jakarta", "the Philippines": "Manila",
    "Saudi Arabia": "Riyadh", "Ghana": "Accra", "Morocco": "Rabat", "New Zealand": "Wellington",
    "Pakistan": "Islamabad",
}  # fmt: skip
CONTINENTS = {
    "France": "Europe", "Germany": "Europe", "Poland": "Europe", "Norway": "Europe",
    "Italy": "Europe", "Japan": "Asia", "China": "Asia", "India": "Asia", "Thailand": "Asia",
    "Vietnam": "Asia", "Kenya": "Africa", "Egypt": "Africa", "Nigeria": "Africa",
    "Ghana": "Africa", "Morocco": "Africa", "Peru": "South America", "Brazil": "South America",
    "Chile": "South America", "Argentina": "South America", "Colombia": "South America",
    "Canada": "North America", "Mexico": "North America", "the United States": "North America",
    "Australia": "Oceania", "New Zealand": "Oceania",
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "day": "night", "fast": "slow",
    "happy": "sad", "open": "closed", "light": "dark", "early": "late", "full": "empty",
    "young": "old", "high": "low", "wet": "dry", "hard": "soft", "rich": "poor",
    "strong": "weak", "thick": "thin", "loud": "quiet", "clean": "dirty", "win": "lose",
    "push": "pull", "buy": "sell", "first": "last", "inside": "outside", "true": "false",
    "left": "right", "near": "far", "above": "below", "before": "after", "give": "take",
    "love": "hate", "remember": "forget", "start": "finish", "always": "never",
    "arrive": "leave", "cheap": "expensive", "deep": "shallow", "north": "south",
    "east": "west", "friend": "enemy", "question": "answer", "sweet": "sour", "tall": "short",
    "laugh": "cry", "accept": "refuse", "entrance": "exit", "asleep": "awake",
    "borrow": "lend", "safe": "dangerous", "wide": "narrow",
}  # fmt: skip
PLURALS = {
    "child": "children", "man": "men", "woman": "women", "mouse": "mice", "goose": "geese",
    "tooth": "teeth", "foot": "feet", "person": "people", "ox": "oxen", "cactus": "cacti",
    "leaf": "leaves", "knife": "knives", "wife": "wives", "wolf": "wolves", "half": "halves",
    "life": "lives", "loaf": "loaves", "potato": "potatoes", "tomato": "tomatoes",
    "hero": "heroes", "city": "cities", "baby": "babies", "party": "parties", "box": "boxes",
    "bus": "buses",
}  # fmt: skip
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = (
    "January February March April May June July August September October November December"
).split()
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
    ("What colour is grass?", "Green", ["Orange", "Pink"]),
    ("How many legs does a dog have?", "Four", ["Two", "Eight"]),
    ("What do cows drink?", "Water", ["Milk", "Oil"]),
    ("Which meal do people eat in the morning?", "Breakfast", ["Dinner", "Supper"]),
    ("How many minutes are there in an hour?", "Sixty", ["Thirty", "Hundred"]),
    ("What falls from clouds when it rains?", "Water", ["Sand", "Leaves"]),
]


@dataclass(frozen=True)
class Question:
    prompt: str
    answer: str
    options: tuple[str, ...]  # the answer among them, in a fixed shuffled order

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


def questions(seed: int = 0) -> list[Question]:
    """The 300 questions, with distractors drawn by a seeded generator."""
    rng = random.Random(seed)
    made = []

    def ask(prompt: str, answer: str, pool: list[str]) -> None:
        others = sorted({x for x in pool if x.lower() != answer.lower()})
        made.append((prompt, answer, rng.sample(others, 2)))

    for country, city in CAPITALS.items():
        ask(f"What is the capital of {country}?", city, list(CAPITALS.values()))
    for country, continent in CONTINENTS.items():
        ask(f"On which continent is {country}?", continent, sorted(set(CONTINENTS.values())))
    for word, opposite in OPPOSITES.items():
        ask(f"What is the opposite of '{word}'?", opposite.capitalize(), list(OPPOSITES.values()))
    for word, plural in PLURALS.items():
        ask(f"What is the plural of '{word}'?", plural, [word + "s", word + "es", word + "en"])
    for names, kind in ((DAYS, "day"), (MONTHS, "month")):
        for i, name in enumerate(names):
            ask(f"Which {kind} comes after {name}?", names[(i + 1) % len(names)], names)
    for sign, apply in (("plus", int.__add__), ("minus", int.__sub__), ("times", int.__mul__)):
        pairs = [(a, b) for a in range(2, 21) for b in range(2, 13) if sign != "minus" or a > b]
        for a, b in rng.sample(pairs, 25):
            right = apply(a, b)
            near = [str(right + d) for d in (-3, -2, -1, 1, 2, 3) if right + d >= 0]
            ask(f"What is {a} {sign} {b}?", str(right), near)
    for _ in range(25):
        numbers = [str(n) for n in rng.sample(range(10, 1000), 3)]
        ask(f"Which is the largest: {', '.join(numbers)}?", max(numbers, key=int), numbers)
    made += FACTS
    result = []
    for prompt, answer, wrong in made:
        options = [answer, *(w[0].upper() + w[1:] if answer[0].isupper() else w for w in wrong)]
        rng.shuffle(options)
        result.append(Question(prompt, answer, tuple(options)))
    return result


def score(
    losses: Callable[[list[tuple[list[dict], str]]], list[float]], slice_: list[Question]
) -> dict[str, float]:
    """``sanity_accuracy``: share of questions whose right option has the lowest loss.

    ``losses(pairs)`` gives, for each ``(messages, option)`` pair, the mean token
    loss of the option as the assistant's reply
    (:meth:`retrain.evaluate.Scorer.answer_losses`): all options of all
    questions go in one call, so the options of a question share one pass over it.
    """
    pairs = [(q.messages(), option) for q in slice_ for option in q.options]
    flat = iter(losses(pairs))
    right = 0
    for question in slice_:
        by_option = {option: next(flat) for option in question.options}
        right += min(by_option, key=by_option.get) == question.answer
    return {"sanity_accuracy": right / len(slice_)}

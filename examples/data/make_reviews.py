"""Rebuild the shipped sentiment data set (`reviews/train.tsv`, `reviews/validation.tsv`) from the phrases below.

The data set was written for optuna_trainer's example: short, made-up product, place and film reviews in English,
labelled 1 (positive) or 0 (negative), in SST-2's TSV layout (header `label<TAB>sentence`). Validation sentences use
opinion phrases that never occur in the training split, so the validation accuracy measures what the model brings
from pre-training plus fine-tuning, not memorized phrases. Run `python examples/data/make_reviews.py` to rebuild the
files; the output is deterministic.
"""

from __future__ import annotations

import csv
import os
import random

SUBJECTS = [
    "The pasta",
    "This phone",
    "The hotel room",
    "The new album",
    "This laptop",
    "The film",
    "The coffee",
    "The concert",
    "This novel",
    "The delivery",
    "The customer service",
    "The museum tour",
    "The rental car",
    "This blender",
    "The sequel",
    "The pizza",
    "The train ride",
    "The headphones",
    "The documentary",
    "The bakery",
    "This jacket",
    "The app",
    "The guided hike",
    "The soup",
    "The play",
    "This vacuum cleaner",
    "The campsite",
    "The cooking class",
    "The podcast",
    "The spa",
    "The dentist",
    "The gym",
    "The board game",
    "The airline",
    "The video game",
    "This mattress",
    "The library",
    "The wedding venue",
    "The taxi driver",
    "The bookshop",
]

POSITIVE = [
    "was a joy from start to finish",
    "exceeded every expectation I had",
    "was worth every penny",
    "made my whole week",
    "was absolutely delightful",
    "is the best I have tried in years",
    "left me smiling for hours",
    "was fresh, friendly and fast",
    "felt thoughtful and well made",
    "is something I would happily recommend",
    "was charming and surprisingly moving",
    "works perfectly and looks great",
    "was a wonderful surprise",
    "never let me down once",
    "was clean, quiet and comfortable",
    "had me hooked from the first minute",
    "was brilliant in every way",
    "turned a dull day into a great one",
    "was a pleasure to use",
    "is going straight onto my favourites list",
    "was generous, warm and welcoming",
    "delivered far more than it promised",
    "was simply excellent",
    "is a real gem",
    "was smooth and effortless",
    "deserves all the praise it gets",
    "felt like a real treat",
    "was lovely and relaxing",
    "is beautifully designed",
    "was great value",
    "kept everyone happy",
    "was a total delight",
    "impressed even my picky friends",
    "was every bit as good as people said",
    "is reliable and a joy to own",
    "was outstanding",
    "won me over completely",
    "was cheerful and helpful",
    "is easily five stars",
    "was superb",
    "was fantastic from beginning to end",
    "left a wonderful impression",
    "is a pleasure every single time",
    "got everything right",
    "was tasty and satisfying",
    "was far better than I hoped",
]

NEGATIVE = [
    "was a complete waste of money",
    "fell apart within a week",
    "was a huge disappointment",
    "ruined the whole evening",
    "was dull and far too long",
    "is the worst I have tried in years",
    "left me angry and frustrated",
    "was cold, slow and overpriced",
    "felt cheap and badly made",
    "is something I would warn anyone against",
    "was boring and painfully predictable",
    "stopped working after two days",
    "was an unpleasant surprise",
    "let me down again and again",
    "was dirty, noisy and cramped",
    "lost my attention within minutes",
    "was awful in every way",
    "turned a good day into a bad one",
    "was a pain to use",
    "is going straight back to the shop",
    "was rude, careless and unwelcoming",
    "delivered far less than it promised",
    "was simply terrible",
    "is a total dud",
    "was clumsy and frustrating",
    "deserves every bad review it gets",
    "felt like a chore",
    "was stressful and exhausting",
    "is ugly and awkward",
    "was a rip-off",
    "made everyone miserable",
    "was a total mess",
    "disappointed even my easygoing friends",
    "was nowhere near as good as people said",
    "is unreliable and annoying to own",
    "was dreadful",
    "lost me completely",
    "was grumpy and unhelpful",
    "is barely worth one star",
    "was horrible",
    "was tedious from beginning to end",
    "left a terrible impression",
    "is a letdown every single time",
    "got everything wrong",
    "was bland and greasy",
    "was far worse than I feared",
]

OPENERS = ["", "", "", "Honestly, ", "Overall, ", "To be fair, ", "Sadly, ", "Frankly, ", "In short, "]
CLOSERS = [".", ".", ".", "!", ", and I will say so to anyone.", ", no question about it."]

N_TRAIN = 360
N_VALIDATION = 120
SEED = 13


def _sentence(rng: random.Random, predicates: list[str]) -> str:
    opener = rng.choice(OPENERS)
    subject = rng.choice(SUBJECTS)
    if opener:
        subject = subject[0].lower() + subject[1:]
    # "Sadly," reads as negative: keep openers from contradicting a positive sentence.
    if opener == "Sadly, " and predicates is POSITIVE:
        opener = "Happily, "
    return f"{opener}{subject} {rng.choice(predicates)}{rng.choice(CLOSERS)}"


def _split(rng: random.Random, phrases: list[str]) -> tuple[list[str], list[str]]:
    shuffled = phrases[:]
    rng.shuffle(shuffled)
    held_out = len(shuffled) // 4
    return shuffled[held_out:], shuffled[:held_out]


def build(seed: int = SEED) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    rng = random.Random(seed)
    pos_train, pos_val = _split(rng, POSITIVE)
    neg_train, neg_val = _split(rng, NEGATIVE)

    def draw(n: int, pos: list[str], neg: list[str], seen: set[str]) -> list[tuple[int, str]]:
        rows: list[tuple[int, str]] = []
        while len(rows) < n:
            label = len(rows) % 2
            sentence = _sentence(rng, pos if label == 1 else neg)
            if sentence not in seen:
                seen.add(sentence)
                rows.append((label, sentence))
        rng.shuffle(rows)
        return rows

    seen: set[str] = set()
    return draw(N_TRAIN, pos_train, neg_train, seen), draw(N_VALIDATION, pos_val, neg_val, seen)


def write(rows: list[tuple[int, str]], path: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\", lineterminator="\n")
        writer.writerow(["label", "sentence"])
        writer.writerows(rows)


if __name__ == "__main__":
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reviews")
    os.makedirs(here, exist_ok=True)
    train, validation = build()
    write(train, os.path.join(here, "train.tsv"))
    write(validation, os.path.join(here, "validation.tsv"))
    print(f"wrote {len(train)} training and {len(validation)} validation sentences to {here}")

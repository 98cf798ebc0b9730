"""Prompts for semantic-drift tests: two topics with one vocabulary, mixed or kept apart.

Half the prompts lead with a billing word, half with a shipping word, and every word is used as
often in either kind of window; coherent prompts stay on one topic, shifted ones pair a billing
word with a shipping word (the same vocabulary and lengths, a different meaning)."""

from __future__ import annotations

import random

BILLING = ["invoice", "refund", "charge", "subscription", "payment", "receipt"]
SHIPPING = ["parcel", "delivery", "courier", "tracking number", "package", "shipment"]
TEMPLATES = [
    "Something is wrong with my {a} and my {b}.",
    "Please check the {a} and the {b} for me.",
    "I have a question about the {a} and the {b}.",
    "Why are my {a} and {b} not updated?",
]


def topic_prompts(rng: random.Random, coherent: bool, count: int) -> list[str]:
    """`count` prompts, on one topic each (`coherent`) or mixing the two."""
    out = []
    for index in range(count):
        first = BILLING if index % 2 == 0 else SHIPPING
        other = SHIPPING if first is BILLING else BILLING
        second = first if coherent else other
        a = rng.choice(first)
        b = rng.choice([word for word in second if word != a])
        out.append(rng.choice(TEMPLATES).format(a=a, b=b))
    return out

"""Fine-tuning sets genlab builds itself from its corpora (no download, no annotator).

The "scripture register" task: to "Tell me about {topic}." the wanted reply is a King James
verse about that topic ("And God said, Let there be light: and there was light."), not a
modern assistant's paragraph. Instruction tuning learns it from (prompt, verse) examples;
preference tuning from pairs where the verse is chosen over the model's own modern reply.
Topics are split: the held-out ones never appear in training.
"""
from __future__ import annotations

import random
import re

from ..data.text import load_corpus

TOPICS = ("light", "water", "sea", "king", "bread", "wine", "fire", "gold", "silver", "city", "river",
          "mountain", "tree", "fruit", "sheep", "horse", "house", "wind", "rain", "stone", "field", "night",
          "morning", "sun", "moon", "star", "earth", "heaven", "land", "war", "peace", "law", "wisdom", "love",
          "fear", "joy", "truth", "blood", "heart", "hand", "voice", "name", "word", "servant", "prophet",
          "priest", "temple", "garden", "cloud", "dust", "oil", "cattle", "daughter", "brother", "mother",
          "father", "child", "wife", "bed", "door", "gate", "wall", "sword", "bow", "ship", "fish", "bird",
          "lion", "wolf", "ox", "harvest", "seed", "grass", "flower", "corn", "honey", "milk", "salt", "sin",
          "grace", "glory", "song", "judge", "throne", "crown", "riches", "poor", "hunger", "sleep", "death")
PROMPTS = ("Tell me about {}.", "What can you say about {}?", "Say something about {}.", "Speak of {}.")
_VERSE = re.compile(r"^\d+:\d+ (.+)$")


def _verses(corpus) -> list:
    out = []
    for _, text in corpus.split_docs("train"):
        for line in text.splitlines():
            m = _VERSE.match(line)
            if m and 50 <= len(m.group(1)) <= 160:
                out.append(m.group(1))
    return out


def scripture_topics(seed: int = 0, held_out: int = 24) -> tuple[list, list]:
    """(training topics, held-out topics)."""
    topics = list(TOPICS)
    random.Random(seed).shuffle(topics)
    return topics[held_out:], topics[:held_out]


def scripture_instructions(topics, per_topic: int = 4, seed: int = 0) -> list:
    """[{"prompt", "response"}]: a request about a topic, answered with a KJV verse on it."""
    verses = _verses(load_corpus("kjv", quiet=True))
    rng = random.Random(seed)
    out = []
    for t in topics:
        pat = re.compile(rf"\b{re.escape(t)}\b", re.IGNORECASE)
        found = [v for v in verses if pat.search(v)]
        for v in rng.sample(found, min(per_topic, len(found))):
            out.append({"prompt": rng.choice(PROMPTS).format(t), "response": v})
    rng.shuffle(out)
    return out


def scripture_preferences(instructions: list, rejected: list) -> list:
    """[{"prompt", "chosen", "rejected"}]: the verse chosen over a modern reply."""
    return [{"prompt": e["prompt"], "chosen": e["response"], "rejected": r}
            for e, r in zip(instructions, rejected) if r.strip()]

"""W5's copy-heavy prompts: "Repeat the following text exactly: <passage>", passages of 40-80 words made
deterministically from a fixed seed out of plain sentences (shared/workloads.md, W5)."""
from __future__ import annotations

import random

SENTENCES = [
    "The old lighthouse stood at the edge of the cliff for more than two hundred years.",
    "Every night its keeper climbed the narrow stairs to light the lamp.",
    "Maria opened her bakery before sunrise and kneaded the dough by hand.",
    "The smell of fresh bread drifted down the quiet street.",
    "A small river turned the wooden wheel that powered the village mill.",
    "In spring the water ran fast and cold from the melting snow.",
    "The committee met in the library to discuss plans for the new park.",
    "Some members wanted a playground, while others preferred a garden with benches.",
    "The train left the station exactly at noon and headed north along the coast.",
    "Passengers watched the grey waves roll against the rocks below the tracks.",
    "Her grandfather kept a collection of maps in a cedar chest under the window.",
    "Each map showed a city as it looked a century ago.",
    "The museum opened a new exhibit about the history of printing.",
    "Visitors could set their own names in metal type and print a small card.",
    "After the storm the neighbors gathered to clear the branches from the road.",
    "By evening the street was clean and the children were playing outside again.",
    "The scientist wrote her notes in a green notebook that never left her desk.",
    "She measured the temperature of the lake every morning for ten years.",
    "The market was busy on Saturdays, with farmers selling apples, cheese and honey.",
    "A musician played the violin near the fountain while people listened.",
    "The ship carried coffee, cotton and letters across the ocean in six weeks.",
    "When it arrived, the whole harbor came out to greet the crew.",
    "The teacher asked each student to bring one object that told a story about their family.",
    "One boy brought a watch that had belonged to his great-grandmother.",
]


def passage(rng: random.Random) -> str:
    """Distinct sentences in a random order until 40-80 words (a sentence is never cut)."""
    words: list[str] = []
    target = rng.randint(40, 80)
    for sentence in rng.sample(SENTENCES, len(SENTENCES)):
        if len(words) >= target:
            break
        words += sentence.split()
    return " ".join(words)


def prompts(n: int, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    return [f"Repeat the following text exactly: {passage(rng)}" for _ in range(n)]

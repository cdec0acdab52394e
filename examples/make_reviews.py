"""Writes examples/reviews.parquet: 300 product reviews (id, category, stars, body), the same every run."""
from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SEED = 7
CATEGORIES = ["kitchen", "garden", "toys", "books", "electronics", "clothing"]
PRAISE = ["works perfectly", "arrived early", "feels sturdy", "is worth the price", "looks great", "is easy to use"]
COMPLAINTS = ["broke after a week", "arrived late", "feels cheap", "is overpriced", "does not fit", "is hard to clean"]
NEUTRAL = ["does what it says", "came in a plain box", "is about as expected", "has a short manual"]


def body(rng: random.Random, category: str, stars: int) -> str:
    pool = PRAISE if stars >= 4 else COMPLAINTS if stars <= 2 else NEUTRAL
    a, b = rng.sample(pool, 2)
    extra = rng.choice(NEUTRAL)
    return f"This {category} product {a}, and it {b}. Honestly it {extra}."


def make(rows: int = 300) -> pa.Table:
    rng = random.Random(SEED)
    categories = [rng.choice(CATEGORIES) for _ in range(rows)]
    stars = [rng.randint(1, 5) for _ in range(rows)]
    return pa.table({"id": list(range(1, rows + 1)), "category": categories, "stars": stars,
                     "body": [body(rng, c, s) for c, s in zip(categories, stars)]})


if __name__ == "__main__":
    out = Path(__file__).with_name("reviews.parquet")
    pq.write_table(make(), out)
    print(f"wrote {out} ({make().num_rows} rows)")

"""W2 of shared/workloads.md: 1,000 product reviews (id, category, body), shuffled, from a fixed seed,
and the fixed ~150-token labelling instruction every row shares as its prompt prefix.

    python -m bench.w2_data out.parquet
"""
from __future__ import annotations

import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq

SEED = 2024
CATEGORIES = ("kitchen", "garden", "toys", "books", "electronics", "clothing", "sports", "beauty")
ITEMS = {"kitchen": ["blender", "kettle", "frying pan", "knife set"], "garden": ["hose", "rake", "planter", "sprinkler"],
         "toys": ["puzzle", "toy car", "doll house", "kite"], "books": ["novel", "cookbook", "atlas", "biography"],
         "electronics": ["headphones", "charger", "speaker", "keyboard"], "clothing": ["jacket", "sneakers", "scarf", "jeans"],
         "sports": ["yoga mat", "tennis racket", "water bottle", "bike helmet"], "beauty": ["face cream", "shampoo", "perfume", "hair dryer"]}
OPENINGS = {
    "positive": ["I love this {item}.", "This {item} is excellent.", "Really happy with the {item}.", "The {item} exceeded my expectations."],
    "negative": ["I regret buying this {item}.", "This {item} is a disappointment.", "The {item} broke quickly.", "Very unhappy with the {item}."],
    "neutral": ["The {item} is fine.", "This {item} does the job.", "The {item} is average.", "It is an ordinary {item}."],
}
DETAILS = {
    "positive": ["the quality is great", "it arrived two days early", "the price was fair", "it works exactly as described",
                 "my family uses it every day", "the packaging was neat", "customer service was friendly"],
    "negative": ["the quality is poor", "delivery took three weeks", "it is overpriced", "it stopped working after a week",
                 "parts were missing", "the box was damaged", "support never answered my emails"],
    "neutral": ["the quality is acceptable", "delivery took the usual time", "the price is normal", "it works most of the time",
                "it looks like the picture", "the manual is short", "nothing special about it"],
}
INSTRUCTION = (
    "You label customer product reviews for a retail analytics team. Read the review and decide its overall "
    "sentiment. Answer 'positive' when the customer is satisfied overall: they praise the product, its quality, "
    "price or delivery, and would recommend or buy it again, even if a small complaint is mentioned. Answer "
    "'negative' when the customer is dissatisfied overall: the product failed, arrived damaged or late, was "
    "overpriced, or the customer regrets the purchase or asks for a refund. Answer 'neutral' when the review is "
    "mixed or factual without a clear opinion, for example when it only describes the product or says it is "
    "average, acceptable or ordinary. Judge the review as a whole, not single words. Ignore spelling mistakes, "
    "the product category and the length of the review. Answer with exactly one word."
)


def review(rng: random.Random, category: str) -> str:
    sentiment = rng.choice(("positive", "negative", "neutral"))
    item = rng.choice(ITEMS[category])
    details = rng.sample(DETAILS[sentiment], 3)
    text = f"{rng.choice(OPENINGS[sentiment]).format(item=item)} {details[0].capitalize()}, and {details[1]}. " \
           f"Also {details[2]}."
    while len(text.split()) < 20:
        text += f" Overall {rng.choice(DETAILS[sentiment])}."
    return text


def make_table(rows: int = 1000, seed: int = SEED) -> pa.Table:
    rng = random.Random(seed)
    categories = [rng.choice(CATEGORIES) for _ in range(rows)]
    bodies = [review(rng, c) for c in categories]
    order = list(range(rows))
    rng.shuffle(order)  # the rows arrive in shuffled order
    return pa.table({"id": [i + 1 for i in order], "category": [categories[i] for i in order],
                     "body": [bodies[i] for i in order]})


def query(table: str = "reviews") -> str:
    instruction = INSTRUCTION.replace("'", "''")
    return (f"SELECT id, classify('smollm2', body, ['positive', 'negative', 'neutral'], "
            f"instruction => '{instruction}') AS label FROM {table}")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "w2_reviews.parquet"
    pq.write_table(make_table(), out)
    print(f"wrote {out}")

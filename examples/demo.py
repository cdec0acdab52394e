"""The demo `make demo` runs: a real SQL query with generate() over examples/reviews.parquet,
its result, and the plan the optimizer chose for it."""
from __future__ import annotations

from pathlib import Path

import sqlm

REVIEWS = Path(__file__).with_name("reviews.parquet")

QUERY = f"""
SELECT id, stars,
       generate('smollm2', 'Summarize this review in five words: ' || body, max_tokens => 24) AS summary
FROM read_parquet('{REVIEWS}')
WHERE stars <= 2
ORDER BY id
LIMIT 8
"""


def main() -> None:
    con = sqlm.connect()
    print(QUERY.strip(), "\n")
    con.sql(QUERY).show()
    print("\nEXPLAIN ANALYZE (the plan the optimizer chose, estimates beside what really happened):\n")
    print(con.explain_last(verbose=True))


if __name__ == "__main__":
    main()

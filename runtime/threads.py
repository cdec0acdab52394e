"""The `threads` setting applied to one query: torch's intra-op thread count while it plans and runs.

What can change per query and what cannot:
- torch (the torch linears, SDPA, norms and elementwise ops on the torch path): set here for the
  query, restored afterwards.
- TVM kernels (codegen/): TVM sizes its thread pool from TVM_NUM_THREADS when it is first
  imported, and codegen/__init__.py sets that from SQLM_THREADS (else the CPU count). After
  that import, `SET threads` does not reach them; to cap them too, start the process with
  SQLM_THREADS=n.

>>> import torch
>>> before = torch.get_num_threads()
>>> with torch_threads(1):
...     torch.get_num_threads()
1
>>> torch.get_num_threads() == before
True
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch uses n threads inside the block (None: leave it as it is)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)

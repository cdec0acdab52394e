"""TVM-generated kernels for the model's hot operators.

Only this package imports TVM, and only when a kernel is built or loaded, so importing
`codegen` is cheap. `TVM_NUM_THREADS` is read by TVM at import time; it defaults here
to `SQLM_THREADS` (the `threads` setting) or the CPU count.

    from codegen.build import get_kernel
    rms_norm = get_kernel("rms_norm", {"hidden": 576, "eps": 1e-5})
    rms_norm(x, weight, out)            # torch tensors, written in place, no copies
"""
import os

import catalog.threading_env  # noqa: F401  (before torch loads OpenMP)

os.environ.setdefault("TVM_NUM_THREADS", os.environ.get("SQLM_THREADS", str(os.cpu_count() or 1)))
# TVM's idle workers spin between parallel kernels; the model interleaves TVM kernels with
# torch ops on the same cores, so a long spin would steal torch's time.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "20000")

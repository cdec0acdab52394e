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
# TVM's idle workers spin between parallel kernels: worth it where TVM kernels follow each other (batch-1 decode
# on quantized weights: 7.4 ms/token spinning, 11 ms sleeping on a 2-core EPYC), ruinous where torch's GEMMs run
# between them (a spinning TVM worker takes the core torch's OpenMP worker needs: bf16 W1 at 120 tok/s spinning,
# 630 sleeping). TVM reads the count once per process, when its pool first runs: interleaved_with_torch() turns
# the spin off for a process whose model runs bf16 GEMMs in torch, if it runs before the first kernel.
_USER_SPIN_COUNT = os.environ.get("TVM_THREAD_POOL_SPIN_COUNT")
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "20000")


def interleaved_with_torch() -> None:
    """This process's model runs torch GEMMs between TVM kernels: TVM's workers sleep as soon as they are idle
    (unless the user set TVM_THREAD_POOL_SPIN_COUNT; no effect once a TVM kernel has run in this process)."""
    if _USER_SPIN_COUNT is None:
        os.environ["TVM_THREAD_POOL_SPIN_COUNT"] = "0"

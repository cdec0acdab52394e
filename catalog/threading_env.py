"""Thread-pool policy that must be in the environment before torch loads OpenMP.

torch's OpenMP workers spin-wait after every parallel region (libgomp's default active
policy) and TVM's pool spins too; the model interleaves torch ops and TVM kernels on the
same cores, so each pool's spinning workers steal the other's core. Sleeping workers cost
a wake-up per region but win overall: W1 bf16 (bench/engine_throughput.py, 2 threads)
ran 429–522 tok/s spinning and 548–579 tok/s with OMP_WAIT_POLICY=PASSIVE.
libgomp reads the policy once, when torch is first imported, so sqlm's packages import
this module before anything imports torch; a process that imported torch earlier, or
that sets OMP_WAIT_POLICY itself, keeps its own policy.
"""
import os

INHERITED_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")  # what the user set, if anything (benchmarks'
# peers run with it rather than with sqlm's default)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

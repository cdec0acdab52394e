from runtime import threading_env  # noqa: F401  (before torch loads OpenMP)

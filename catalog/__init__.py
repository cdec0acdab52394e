import catalog.threading_env  # noqa: F401  (before torch loads OpenMP)

"""Benchmarks: the cascade against its baselines (``cascade``, with ``live``), router overhead
(``router``), per-variant exits (``models``) and operator convergence (``reconcile``)."""

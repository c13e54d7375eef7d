"""Harnesses around the product, never part of it: a real local Kubernetes control plane with
its PKI and the operator as a process (tests, e2e and the real-node tier use them), and the
benchmarks (``bench/``).

The ``tierplace`` wheel does not ship this package and no ``tierplace`` module imports it
(an import-linter contract in pyproject.toml). A source checkout puts it on the virtualenv's
path (``make setup``); the CLI then offers its ``tierplace bench...`` commands.
"""

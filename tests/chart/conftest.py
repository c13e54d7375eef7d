"""Fixtures for the chart tests: the real helm binary (scripts/install-helm.sh, via `make`)."""

from __future__ import annotations

import os

import pytest

from tests.chart.helmkit import Helm, helm_path


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = helm_path()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no helm at {binary}: run scripts/install-helm.sh (make helm) first")
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))

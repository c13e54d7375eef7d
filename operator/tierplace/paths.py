"""Where tierplace keeps what must never be committed: weights, unpacked encoders, caches."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Root of generated artifacts; ``TIERPLACE_HOME`` overrides ``~/.cache/tierplace``."""
    env = os.environ.get("TIERPLACE_HOME")
    return Path(env) if env else Path.home() / ".cache" / "tierplace"


def models_dir() -> Path:
    """Trained variants, one folder each; Triton's model.py reads the same place."""
    return home() / "models"


def repo_root() -> Path:
    """The checkout this package runs from (operator/tierplace/paths.py -> repo root)."""
    return Path(__file__).resolve().parents[2]


def model_repository() -> Path:
    """The Triton model repository shipped in the checkout."""
    return repo_root() / "model-repo"


def monitoring_dir() -> Path:
    """The Grafana dashboard and the alerting rules, shipped by the Helm chart and loaded by
    ``tierplace up`` alike (docs/monitoring.md)."""
    return repo_root() / "charts" / "tierplace" / "monitoring"


def dashboard_file() -> Path:
    """The Grafana dashboard JSON (import it into any Grafana)."""
    return monitoring_dir() / "dashboard.json"


def alert_rules_file() -> Path:
    """The Prometheus alerting rules (a plain rule file)."""
    return monitoring_dir() / "rules.yaml"

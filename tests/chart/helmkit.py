"""Helm for the chart and e2e tests: the binary scripts/install-helm.sh caches, run with its own
config and cache directories so that tests never read or write the user's Helm state."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "tierplace"
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples"
#: Every values file the chart ships: the defaults and the examples under ci/.
VALUES_FILES = [CHART / "values.yaml", *sorted((CHART / "ci").glob("*.yaml"))]


def helm_path() -> Path:
    """``$TIERPLACE_HELM``, else where scripts/install-helm.sh caches it."""
    explicit = os.environ.get("TIERPLACE_HELM")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("TIERPLACE_CACHE", str(Path.home() / ".cache" / "tierplace")))
    return cache / "helm" / "helm"


@dataclass(frozen=True)
class Helm:
    binary: Path
    home: Path  # HELM_{CACHE,CONFIG,DATA}_HOME live here
    kubeconfig: Path | None = None

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def run(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run helm; with ``check`` a failure raises with helm's own output in the message."""
        proc = subprocess.run(
            [str(self.binary), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def with_kubeconfig(self, kubeconfig: Path) -> Helm:
        return Helm(self.binary, self.home, kubeconfig)

    def template(
        self,
        values: Sequence[Path] = (),
        namespace: str = "tierplace",
        release: str = "tierplace",
        sets: Mapping[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        """The rendered manifests (templates only; CRDs come from crds/), as dicts."""
        args = ["template", release, str(CHART), "--namespace", namespace]
        for path in values:
            args += ["--values", str(path)]
        for key, value in (sets or {}).items():
            args += ["--set", f"{key}={value}"]
        return list(documents(self.run(*args).stdout))


def documents(text: str) -> Iterator[dict[str, Any]]:
    """The non-empty YAML documents of a multi-document stream."""
    for doc in yaml.safe_load_all(text):
        if doc:
            yield doc


def load_all(path: Path) -> list[dict[str, Any]]:
    return list(documents(path.read_text()))

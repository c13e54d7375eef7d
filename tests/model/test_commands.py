"""The model tier's commands as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tierplace.local.ports import free_port


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "TIERPLACE_HOME": str(home)}


def test_triton_command_refuses_to_start_without_weights(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tierplace.cli", "triton", "--model", "minilm-l2"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "no trained weights for minilm-l2" in done.stdout


@pytest.mark.triton
def test_triton_command_serves_until_terminated(tiny_model_home: Path) -> None:
    port = free_port()
    ports = ["--http-port", str(port), "--grpc-port", str(free_port())]
    ports += ["--metrics-port", str(free_port())]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierplace.cli", "triton", "--model", "minilm-l2", *ports],
        env=_env(tiny_model_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                url = f"http://127.0.0.1:{port}/v2/models/minilm-l2/ready"
                ready = urllib.request.urlopen(url, timeout=1).status == 200
            except OSError:
                time.sleep(0.3)
        assert ready, "tierplace triton never became ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=1)


def test_model_repo_check_passes_on_the_committed_repository() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tierplace.cli", "model-repo", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout


@pytest.mark.triton
def test_bench_models_writes_json_table_and_plot(tiny_model_home: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "bench"
    args = ["--repeats", "3", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "tierplace.cli", "bench-models", "--variant", "minilm-l2", *args],
        env=_env(tiny_model_home),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "models.json").read_text())
    entry = result["variants"]["minilm-l2"]
    for source in ("in_process", "triton"):
        for batch in ("1", "8"):
            assert set(entry[source][batch]) == {"1", "2"}
            assert all(v > 0 for v in entry[source][batch].values())
    assert "| `minilm-l2` | 2 |" in (out / "models.md").read_text()
    assert (out / "models.png").stat().st_size > 1000


def test_train_passes_the_calibration_share_and_weights_on_to_every_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The flags reach the training config (training itself is exercised in test_distill)."""
    from types import SimpleNamespace

    from tierplace import cli
    from tierplace.model import train

    seen: dict[str, train.TrainConfig] = {}

    def record(variant: str, out: Path, cfg: train.TrainConfig, **_: object) -> object:
        seen[variant] = cfg
        return SimpleNamespace(exit_accuracy=[0.5])

    monkeypatch.setattr(train, "train_variant", record)
    args = ["train", "--out", str(tmp_path), "--validation-tenths", "2", "--cascade-weight", "0.5"]
    assert cli.main(args) == 0
    assert list(seen) == ["mpnet-base", "minilm-l2", "minilm-l6"]  # the teacher first
    assert {c.validation_tenths for c in seen.values()} == {2}
    assert {c.cascade_weight for c in seen.values()} == {0.5}
    assert seen["minilm-l2"].teacher == "mpnet-base"
    assert capsys.readouterr().out.count("exit_accuracy") == 3


def test_train_refuses_a_calibration_share_before_loading_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tierplace import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["train", "--validation-tenths", "5"])
    assert exited.value.code == 2
    assert (
        "--validation-tenths: invalid choice: 5 (choose from 1, 2, 3, 4)" in capsys.readouterr().err
    )

"""The router config: validation at the boundary and reload that never applies a bad file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml

from tierplace.router.config import ConfigError, ConfigWatcher, load, parse, parse_duration

GOOD = {
    "prometheus": {"url": "http://127.0.0.1:9090", "interval": "2s"},
    "cascades": [
        {
            "name": "sentiment",
            "budget": "250ms",
            "tiers": [
                {"name": "device", "endpoint": "127.0.0.1:8000", "model": "minilm-l2"},
                {"name": "edge", "endpoint": "127.0.0.1:8001", "model": "minilm-l6"},
                {
                    "name": "cloud",
                    "endpoint": "127.0.0.1:8002",
                    "model": "mpnet-base",
                    "expected_latency": "80ms",
                },
            ],
        }
    ],
}


def test_durations_need_a_unit() -> None:
    assert parse_duration("150ms") == pytest.approx(0.15)
    assert parse_duration("2s") == 2.0
    with pytest.raises(ValueError, match="150ms"):
        parse_duration(150)


def test_valid_file_loads_with_catalogue_defaults(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    cfg = load(path)
    cascade = cfg.cascade("sentiment")
    assert cascade is not None and cascade.budget == pytest.approx(0.25)
    assert [t.tokenizer_family for t in cascade.tiers] == ["bert-uncased", "bert-uncased", "mpnet"]
    assert cascade.tiers[2].expected_latency == pytest.approx(0.08)
    assert cascade.tiers[0].selector == 'model="minilm-l2"'


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"offload_threshold": 1.5}, "offload_threshold"),
        ({"threshold_bounds": [0.9, 0.5]}, "threshold_bounds"),
        ({"endpoint": "http://x/"}, "host:port"),
        ({"model": "gpt-9"}, "needs a tokenizer"),
        ({"expected_latency": 5}, "duration"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_tier_is_refused_with_where_and_why(patch: dict[str, object], message: str) -> None:
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    doc["cascades"][0]["tiers"][0].update(patch)
    with pytest.raises(ConfigError, match=message) as info:
        parse(doc)
    assert "cascades.0.tiers.0" in str(info.value)


def test_duplicate_tier_names_are_refused() -> None:
    doc = yaml.safe_load(yaml.safe_dump(GOOD))
    doc["cascades"][0]["tiers"][1]["name"] = "device"
    with pytest.raises(ConfigError, match="unique"):
        parse(doc)


def test_reload_applies_a_valid_change_and_refuses_an_invalid_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    watcher = ConfigWatcher(path, load(path))
    assert watcher.poll() is None  # unchanged

    changed = yaml.safe_load(yaml.safe_dump(GOOD))
    changed["cascades"][0]["budget"] = "400ms"
    _rewrite(path, yaml.safe_dump(changed))
    new = watcher.poll()
    assert new is not None and new.cascades[0].budget == pytest.approx(0.4)

    _rewrite(path, "cascades: [{name: sentiment, tiers: []}]")
    with caplog.at_level(logging.ERROR), pytest.raises(ConfigError):
        watcher.poll()
    assert "keeping the running config" in caplog.text
    assert watcher.current.cascades[0].budget == pytest.approx(0.4)

    _rewrite(path, "cascades: [unclosed")
    with pytest.raises(ConfigError, match=r"router\.yaml"):
        watcher.poll()
    assert watcher.current == new


def _rewrite(path: Path, text: str) -> None:
    """Write and bump the mtime so a change inside one clock tick is still seen."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000, before + 1_000_000))

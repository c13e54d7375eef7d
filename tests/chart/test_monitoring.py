"""Dashboards, alerts and scraping (docs/monitoring.md): the Grafana dashboard and the alerting
rules of charts/tierplace/monitoring/, how the chart ships them with and without
prometheus-operator, and that every query names metrics and labels the code really exports.

The rules are checked by promtool (Debian's prometheus package) and unit-tested alert by alert
(tests/chart/rules_test.yaml). Every dashboard query runs against a real Prometheus that
scrapes the router's and the operator's real registries and Triton's exposition, as the
embedded stack labels them; each must return series whose labels fill the panel's legend.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tests.chart.helmkit import CHART, REPO, Helm
from tierplace import paths
from tierplace.api import names
from tierplace.api.models import InferenceCascadeSpec, InferenceTierSpec
from tierplace.api.variants import VARIANTS
from tierplace.controller import manifests
from tierplace.controller.manifests import Owner
from tierplace.controller.metrics import OperatorMetrics
from tierplace.local.prometheus import PrometheusServer, ScrapeTarget, scrape_config
from tierplace.router.metrics import RouterMetrics
from tierplace.router.online import Basis

DASHBOARD = CHART / "monitoring" / "dashboard.json"
RULES = CHART / "monitoring" / "rules.yaml"
RULE_TESTS = REPO / "tests" / "chart" / "rules_test.yaml"
MONITORING_API = "monitoring.coreos.com/v1"

#: Triton 2.51's metric families the dashboard and rules may use (docs/architecture.md; the
#: router's latency feed reads the same), with their labels.
TRITON_METRICS = {
    name: {"model", "version"}
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_input_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_compute_output_duration_us",
        "nv_inference_pending_request_count",
    )
}
#: Labels Prometheus attaches to every scraped series: the bundled Prometheus, the PodMonitors
#: and the embedded stack all give Triton targets ``tier`` (routers and the operator get none).
TARGET_LABELS = {"instance", "job", "namespace", "pod", "node", "tier"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
    # aggregations, which may take their `by (...)` before the parenthesis
    "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk",
    "quantile", "count_values",
}  # fmt: skip


def _sample_labels(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Every sample name a registry can export (counters' _total, histograms' _bucket/_sum/
    _count), with its label names (``le`` on buckets)."""
    out: dict[str, set[str]] = {}
    for collector in list(registry._collector_to_names):
        labelnames = set(getattr(collector, "_labelnames", ()))
        kind = getattr(collector, "_type", None)
        name = getattr(collector, "_name", None)
        if name is None:  # process / platform collectors: take what they export
            for family in collector.collect():
                for sample in family.samples:
                    out.setdefault(sample.name, set()).update(sample.labels)
            continue
        if kind == "counter":
            out[f"{name}_total"] = labelnames
        elif kind == "histogram":
            out[f"{name}_bucket"] = labelnames | {"le"}
            out[f"{name}_sum"] = out[f"{name}_count"] = labelnames
        else:
            out[name] = labelnames
    return out


def known_metrics() -> dict[str, set[str]]:
    """metric name -> label names, from the router's and the operator's own registries, plus
    Triton's families and Prometheus' ``up``."""
    known = {**_sample_labels(RouterMetrics().registry)}
    known.update(_sample_labels(OperatorMetrics().registry))
    known.update(TRITON_METRICS)
    known["up"] = set()
    return known


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, expr, legendFormat) of every query on the dashboard."""
    return [
        (p["title"], t["expr"], t.get("legendFormat", ""))
        for p in panels(dashboard())
        for t in p.get("targets", [])
    ]


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(RULES.read_text())
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def _strip(expr: str) -> str:
    """The expression without strings, label matchers, ranges and label lists."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", expr)


def metric_names(expr: str) -> set[str]:
    """Identifiers that are not functions, keywords or numbers: the metric names."""
    found = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\s*(\()?", _strip(expr)):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        found.add(word)
    return found


def selectors(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric, label names matched) for every ``metric{...}`` in the expression."""
    for m in re.finditer(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr):
        matched = set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2)))
        yield m.group(1), matched


def grouping_labels(expr: str) -> set[str]:
    out: set[str] = set()
    for m in re.finditer(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
        out |= {w.strip() for w in m.group(1).split(",") if w.strip()}
    return out


ALL_EXPRS = [(f"panel {t!r}", e) for t, e, _ in dashboard_targets()] + [
    (f"rule {n}", e) for n, e in rule_exprs()
]


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_every_query_names_exported_metrics_and_their_labels(where: str, expr: str) -> None:
    known = known_metrics()
    used = metric_names(expr)
    assert used, f"{where}: no metric found in {expr!r}"
    unknown = used - set(known)
    assert not unknown, f"{where} uses metrics nobody exports: {sorted(unknown)}"
    for metric, matched in selectors(expr):
        allowed = known[metric] | TARGET_LABELS
        assert matched <= allowed, f"{where}: {metric} has no label {sorted(matched - allowed)}"
    for label in grouping_labels(expr) - {"le"}:
        assert any(label in known[m] | TARGET_LABELS for m in used), (
            f"{where} groups by {label!r}, which none of {sorted(used)} carries"
        )


def test_the_dashboard_shows_everything_issue_16_asks_for() -> None:
    used = set().union(*(metric_names(e) for _, e, _ in dashboard_targets()))
    wanted = {
        "tierplace_router_answers_total",  # answered share per tier
        "tierplace_router_exit_layer_bucket",  # exit-layer distribution
        "tierplace_router_offloads_total",  # offload, degraded and refusal rates by reason
        "tierplace_router_degraded_total",
        "tierplace_router_rejections_total",
        "tierplace_router_request_seconds_bucket",  # end-to-end latency against the budget
        "tierplace_router_budget_seconds",
        "tierplace_router_tier_call_seconds_bucket",  # per-tier latency
        "tierplace_router_effective_threshold",  # thresholds over time
        "tierplace_router_metrics_stale",  # feed staleness
        "nv_inference_queue_duration_us",  # Triton queue and compute time per tier
        "nv_inference_compute_infer_duration_us",
    }
    operator = {n for n in _sample_labels(OperatorMetrics().registry) if not n.endswith("_sum")}
    operator -= {"tierplace_operator_reconcile_seconds_count"}
    assert wanted | operator <= used, sorted((wanted | operator) - used)


#: Label values the router writes on its online calibration metrics (router/shadow.py).
ONLINE_LABEL_VALUES = {
    "statistic": {"estimate", "bound"},
    "outcome": {"agree", "disagree", "failed", "skipped"},
    "basis": {b.value for b in Basis},
    "source": {"window", "calibration"},
}


def row_panels(doc: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """The panels of the row ``title``: nested in it when collapsed, else those that follow it
    up to the next row."""
    top = doc["panels"]
    (at,) = [i for i, p in enumerate(top) if p["type"] == "row" and p["title"] == title]
    if top[at].get("collapsed"):
        nested: list[dict[str, Any]] = top[at]["panels"]
        return nested
    following = []
    for panel in top[at + 1 :]:
        if panel["type"] == "row":
            break
        following.append(panel)
    return following


def test_the_dashboard_shows_online_calibration() -> None:
    """The disagreement with its bound, the thresholds and their basis, the shadow calls and
    their share (docs/online-calibration.md), in a row of their own, from the router's
    metrics and the label values it writes."""
    row = row_panels(dashboard(), "Online calibration")
    assert len(row) >= 3, [p["title"] for p in row]
    exprs = [t["expr"] for p in row for t in p["targets"]]
    used = set().union(*(metric_names(e) for e in exprs))
    router = set(_sample_labels(RouterMetrics().registry))
    assert used <= router, f"not the router's: {sorted(used - router)}"
    wanted = {
        "tierplace_router_online_disagreement",
        "tierplace_router_online_threshold",
        "tierplace_router_effective_threshold",
        "tierplace_router_online_basis",
        "tierplace_router_online_pairs",
        "tierplace_router_online_exit_share",
        "tierplace_router_shadow_calls_total",
        "tierplace_router_shadow_in_flight",
        "tierplace_router_answers_total",  # the shadow share's denominator
    }
    assert wanted <= used, sorted(wanted - used)
    matched: dict[str, set[str]] = {}
    for expr in exprs:
        for label, value in re.findall(r'\b(\w+)\s*(?:=|!=)\s*"([^"$]*)"', expr):
            matched.setdefault(label, set()).add(value)
    for label, values in ONLINE_LABEL_VALUES.items():
        assert matched.get(label, set()) <= values, f"{label}: {matched[label] - values}"
    # The bound beside the estimate; every basis the router writes; skipped calls kept out
    # of the share, as status.shadowShare keeps them out.
    assert {"estimate", "bound"} <= matched["statistic"]
    assert matched["basis"] == ONLINE_LABEL_VALUES["basis"]
    assert "skipped" in matched["outcome"]
    assert matched["source"] == ONLINE_LABEL_VALUES["source"]  # the shift test's two sides
    units = {
        t["legendFormat"]: p["fieldConfig"]["defaults"]["unit"] for p in row for t in p["targets"]
    }
    assert units["{{tier}} estimate"] == units["{{tier}} bound"] == "percentunit"


def _area(panel: dict[str, Any]) -> set[tuple[int, int]]:
    """The grid cells a panel covers; a panel repeated horizontally fills its rows."""
    grid = panel["gridPos"]
    right = 24 if panel.get("repeatDirection") == "h" else grid["x"] + grid["w"]
    return {
        (x, y) for x in range(grid["x"], right) for y in range(grid["y"], grid["y"] + grid["h"])
    }


def test_the_dashboard_layout_has_no_overlaps_and_keeps_panels_under_their_row() -> None:
    doc = dashboard()
    top = doc["panels"]
    covered: dict[tuple[int, int], str] = {}
    for panel in top:  # a collapsed row's own panels are laid out when it opens
        for cell in _area(panel):
            assert cell not in covered, f"{panel['title']!r} overlaps {covered[cell]!r}"
            covered[cell] = panel["title"]
    # Listed in reading order, so an open row's panels are the ones that follow it.
    order = [(p["gridPos"]["y"], p["gridPos"]["x"]) for p in top]
    assert order == sorted(order)


def test_the_dashboard_is_well_formed_for_grafana() -> None:
    doc = dashboard()
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 36
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(doc):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        text = json.dumps(panel)
        for var in re.findall(r"\$(?:\{)?([a-zA-Z_]\w*)", text):
            assert var in variables or var.startswith("__"), f"{panel['title']}: ${var}"
        if "repeat" in panel:
            assert panel["repeat"] in variables


# --- Real Prometheus: every dashboard query returns series that fill its legend -----------


def _serve(registry: CollectorRegistry) -> str:
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    return f"127.0.0.1:{server.server_port}"


TIERS = ("device", "edge", "cloud")


def _router_registry() -> CollectorRegistry:
    """The router's registry as one request of each kind leaves it (real metric objects)."""
    m = RouterMetrics()
    cascade = "sentiment"
    m.budget.labels(cascade).set(0.5)
    m.metrics_stale.set(0)
    for i, tier in enumerate(TIERS):
        m.effective_threshold.labels(cascade, tier).set(0.85)
        m.expected_latency.labels(cascade, tier).set(0.01 * (i + 1))
        m.tier_open.labels(cascade, tier).set(0)
        m.tier_skipped.labels(cascade, tier).inc(0)
        m.exit_layer.labels(cascade, tier).observe(i + 1)
        m.tier_call_seconds.labels(cascade, tier, "ok").observe(0.01 * (i + 1))
        m.request_seconds.labels(cascade, tier).observe(0.02 * (i + 1))
        m.answers.labels(cascade, tier, "Confident" if i < 2 else "TopTier").inc()
    m.answers.labels(cascade, "device", "UpperTierFailed").inc()
    m.offloads.labels(cascade, "device", "edge", "LowConfidence").inc()
    m.degraded.labels(cascade, "device", "timeout").inc()
    m.rejections.labels(cascade, "InFlightLimit").inc()
    m.failures.labels(cascade, "TierUnavailable").inc()
    m.in_flight.labels(cascade).set(0)
    for tier, basis in zip(TIERS[:-1], (Basis.CERTIFIED, Basis.REFUTED), strict=True):
        m.online_threshold.labels(cascade, tier).set(0.8)
        m.online_disagreement.labels(cascade, tier, "estimate").set(0.004)
        m.online_disagreement.labels(cascade, tier, "bound").set(0.007)
        m.online_pairs.labels(cascade, tier).set(900)
        for source in ONLINE_LABEL_VALUES["source"]:
            m.online_exit_share.labels(cascade, tier, source).set(0.5)
        for each in Basis:
            m.online_basis.labels(cascade, tier, each.value).set(float(each == basis))
        for outcome in ONLINE_LABEL_VALUES["outcome"]:
            m.shadow_calls.labels(cascade, tier, outcome).inc()
    m.shadow_in_flight.labels(cascade).set(0)
    return m.registry


def _operator_registry() -> CollectorRegistry:
    m = OperatorMetrics()
    for kind in ("InferenceTier", "InferenceCascade"):
        m.managed(kind, "ns", "sentiment")
        with m.reconciling(kind):
            pass
        with pytest.raises(RuntimeError), m.reconciling(kind):
            raise RuntimeError("refused")
    return m.registry


def _triton_registry(model: str) -> CollectorRegistry:
    """Triton's exposition: its names and labels as tritonserver 2.51 writes them. Gauges,
    because prometheus_client would append _total to a counter's name (Triton's carry none);
    PromQL's rate() reads either."""
    r = CollectorRegistry()
    for name in TRITON_METRICS:
        g = Gauge(name, "Triton", ["model", "version"], registry=r)
        g.labels(model, "1").set(0 if name == "nv_inference_pending_request_count" else 1000)
    return r


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def substitute_variables(expr: str) -> str:
    """A panel's query as Grafana sends it for cascade sentiment and every tier."""
    return (
        expr.replace("$cascade", "sentiment")
        .replace("$tier", "|".join(TIERS))
        .replace("$__rate_interval", "1m")
    )


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    targets = [ScrapeTarget("router", _serve(_router_registry()))]
    targets.append(ScrapeTarget("operator", _serve(_operator_registry())))
    for tier in TIERS:
        variant = {"device": "minilm-l2", "edge": "minilm-l6", "cloud": "mpnet-base"}[tier]
        address = _serve(_triton_registry(variant))
        targets.append(ScrapeTarget("triton", address, {"tier": tier}))
    server = PrometheusServer(
        targets,
        data_dir=tmp_path_factory.mktemp("prometheus"),
        rule_files=[paths.alert_rules_file()],
    )
    with server:
        deadline = time.monotonic() + 30
        # rate() needs two scrapes of every target inside its window.
        while time.monotonic() < deadline:
            counts = _query(server.url, "count_over_time(up[1m])")
            if len(counts) == len(targets) and all(float(c["value"][1]) >= 3 for c in counts):
                break
            time.sleep(0.5)
        else:
            pytest.fail("Prometheus did not scrape every target three times in 30 s")
        yield server


QUERIES = dashboard_targets()


@pytest.mark.prometheus
@pytest.mark.parametrize(
    ("title", "expr", "legend"), QUERIES, ids=[f"{t} [{e[:40]}]" for t, e, _ in QUERIES]
)
def test_every_dashboard_query_returns_series_that_fill_its_legend(
    live_prometheus: PrometheusServer, title: str, expr: str, legend: str
) -> None:
    result = _query(live_prometheus.url, substitute_variables(expr))
    assert result, f"{title!r}: no series for {substitute_variables(expr)}"
    wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    for series in result:
        missing = wanted - set(series["metric"])
        assert not missing, f"{title!r}: legend {legend!r} needs {missing}, got {series['metric']}"


@pytest.mark.prometheus
def test_the_embedded_prometheus_loads_every_alert(live_prometheus: PrometheusServer) -> None:
    with urllib.request.urlopen(f"{live_prometheus.url}/api/v1/rules", timeout=5) as resp:
        groups = json.loads(resp.read())["data"]["groups"]
    loaded = {r["name"]: r["health"] for g in groups for r in g["rules"]}
    assert loaded == {n: "ok" for n, _ in rule_exprs()}


def test_scrape_config_lists_rule_files_by_absolute_path(tmp_path: Path) -> None:
    doc = scrape_config([], rule_files=[paths.alert_rules_file()])
    assert doc["rule_files"] == [str(RULES.resolve())]
    assert "rule_files" not in scrape_config([])


# --- promtool ------------------------------------------------------------------------------


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: run scripts/install-system-deps.sh (Debian prometheus)")
    return found


def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in out.stdout


def test_promtool_unit_tests_pass_and_cover_every_alert_firing_and_quiet() -> None:
    out = subprocess.run(
        [_promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    alerts = {n for n, _ in rule_exprs()}
    fires = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts == fires == quiet


# --- The chart: both paths rendered and checked -------------------------------------------


def _render(helm: Helm, *extra: str, **sets: str) -> list[dict[str, Any]]:
    args = ["template", "tierplace", str(CHART), "--namespace", "tierplace", *extra]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return [d for d in yaml.safe_load_all(helm.run(*args).stdout) if d]


def _named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return found


#: The documented fields of prometheus-operator's PodMonitor and PrometheusRule that the chart
#: uses (monitoring.coreos.com/v1 API reference); their CRDs are not available offline.
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "required": ["name", "namespace", "labels"],
    "properties": {"name": {"type": "string", "maxLength": 63}, "labels": _LABELS},
}
_RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "targetLabel": {"type": "string"},
        "action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"]},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "separator": {"type": "string"},
    },
}
POD_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": MONITORING_API},
        "kind": {"const": "PodMonitor"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": _LABELS},
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "relabelings": {"type": "array", "items": _RELABEL},
                        },
                    },
                },
            },
        },
    },
}
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"type": "string"},
        "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": MONITORING_API},
        "kind": {"const": "PrometheusRule"},
        "metadata": _META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": {"type": "string"},
                            "rules": {"type": "array", "items": _RULE},
                        },
                    },
                }
            },
        },
    },
}


def _tier_pod(tier_class: str) -> dict[str, Any]:
    """A Triton pod template as the operator writes it (controller/manifests.py)."""
    owner = Owner(names.API_VERSION, names.TIER_KIND, "sentiment-edge", "u-1", "ns")
    spec = InferenceTierSpec.model_validate({"tierClass": tier_class})
    deployment = manifests.triton_deployment(owner, spec, VARIANTS["minilm-l6"], 530)
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


def _router_pod() -> dict[str, Any]:
    owner = Owner(names.API_VERSION, names.CASCADE_KIND, "sentiment", "u-2", "ns")
    spec = InferenceCascadeSpec.model_validate(
        {"tiers": [{"tierClass": "Device"}, {"tierClass": "Cloud"}]}
    )
    configmap = manifests.router_configmap(owner, {"cascades": []})
    template: dict[str, Any] = manifests.router_deployment(owner, spec, configmap)["spec"][
        "template"
    ]
    return template


def _container_ports(pod: dict[str, Any]) -> set[str]:
    return {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}


def test_with_prometheus_operator_the_chart_ships_pod_monitors_and_a_prometheus_rule(
    helm: Helm,
) -> None:
    docs = _render(helm, "--api-versions", MONITORING_API)
    rule = _named(docs, "PrometheusRule", "-rules")
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    assert rule["spec"] == yaml.safe_load(RULES.read_text())  # the one source, verbatim
    assert not [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-rules")
    ]

    triton = _named(docs, "PodMonitor", "-triton")
    router = _named(docs, "PodMonitor", "-router")
    for monitor, pod in ((triton, _tier_pod("Edge")), (router, _router_pod())):
        jsonschema.validate(monitor, POD_MONITOR_SCHEMA)
        spec = monitor["spec"]
        selector = spec["selector"]["matchLabels"]
        labels = pod["metadata"]["labels"]
        assert selector.items() <= labels.items(), (selector, labels)
        (endpoint,) = spec["podMetricsEndpoints"]
        assert endpoint["port"] in _container_ports(pod)
        assert endpoint["path"] == pod["metadata"]["annotations"]["prometheus.io/path"]
        assert spec["namespaceSelector"] == {"any": True}
    # Only Triton targets get the `tier` label the dashboard joins on (the router exports its
    # own `tier` label on every series).
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_tierplace_io_tier"],
        "targetLabel": "tier",
    } in (triton["spec"]["podMetricsEndpoints"][0]["relabelings"])
    assert all(
        r.get("targetLabel") != "tier"
        for r in router["spec"]["podMetricsEndpoints"][0]["relabelings"]
    )
    # Neither selects the other's pods.
    assert (
        not triton["spec"]["selector"]["matchLabels"].items()
        <= _router_pod()["metadata"]["labels"].items()
    )

    operator = _named(docs, "PodMonitor", "-operator")
    jsonschema.validate(operator, POD_MONITOR_SCHEMA)
    deployment = _named(docs, "Deployment", "-operator")
    pod = deployment["spec"]["template"]
    assert operator["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert (
        operator["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    )
    assert operator["spec"]["podMetricsEndpoints"][0]["port"] in _container_ports(pod)
    assert operator["spec"]["namespaceSelector"] == {"matchNames": ["tierplace"]}


def test_pod_monitors_follow_watched_namespaces_and_carry_the_selector_labels(helm: Helm) -> None:
    docs = _render(
        helm,
        "--api-versions",
        MONITORING_API,
        **{
            "operator.watchNamespaces[0]": "edge-apps",
            "monitoring.podMonitors.labels.release": "kube-prometheus-stack",
            "monitoring.rules.labels.release": "kube-prometheus-stack",
        },
    )
    for suffix in ("-triton", "-router"):
        monitor = _named(docs, "PodMonitor", suffix)
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["edge-apps"]}
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert _named(docs, "PrometheusRule", "-rules")["metadata"]["labels"]["release"] == (
        "kube-prometheus-stack"
    )
    off = _render(
        helm, "--api-versions", MONITORING_API, **{"monitoring.podMonitors.enabled": "false"}
    )
    assert not [d for d in off if d["kind"] == "PodMonitor"]


def test_without_prometheus_operator_pods_are_annotated_and_rules_are_a_plain_file(
    helm: Helm,
) -> None:
    docs = _render(helm)
    assert not [d for d in docs if d["apiVersion"] == MONITORING_API]
    rules = _named(docs, "ConfigMap", "-rules")
    assert rules["data"]["tierplace.rules.yaml"] == RULES.read_text().rstrip("\n")
    # The operator's pod is annotated for discovery, on the port its metrics are served on.
    pod = _named(docs, "Deployment", "-operator")["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TIERPLACE_METRICS_PORT"] == annotations["prometheus.io/port"]
    assert env["TIERPLACE_METRICS_ADDR"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert str(ports["metrics"]) == annotations["prometheus.io/port"]
    # Tiers and routers: the operator annotates them itself.
    for pod in (_tier_pod("Edge"), _router_pod()):
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_the_dashboard_configmap_follows_the_grafana_sidecar_convention(helm: Helm) -> None:
    default = _named(_render(helm), "ConfigMap", "-dashboard")
    assert default["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert default["metadata"]["namespace"] == "tierplace"
    assert json.loads(default["data"]["tierplace.json"]) == dashboard()
    moved = _named(
        _render(
            helm,
            **{
                "monitoring.dashboard.label": "grafana_dashboard_tierplace",
                "monitoring.dashboard.labelValue": "yes",
                "monitoring.dashboard.namespace": "monitoring",
                "monitoring.dashboard.annotations.grafana_folder": "tierplace",
            },
        ),
        "ConfigMap",
        "-dashboard",
    )
    assert moved["metadata"]["labels"]["grafana_dashboard_tierplace"] == "yes"
    assert "grafana_dashboard" not in moved["metadata"]["labels"]
    assert moved["metadata"]["namespace"] == "monitoring"
    assert moved["metadata"]["annotations"] == {"grafana_folder": "tierplace"}
    off = _render(
        helm, **{"monitoring.dashboard.enabled": "false", "monitoring.rules.enabled": "false"}
    )
    assert not [d for d in off if d["metadata"]["name"].endswith(("-dashboard", "-rules"))]


def test_the_bundled_prometheus_loads_the_rules_and_labels_triton_targets_by_tier(
    helm: Helm, tmp_path: Path
) -> None:
    for extra in ((), ("--api-versions", MONITORING_API)):
        docs = _render(helm, *extra, **{"prometheus.bundled.enabled": "true"})
        rules = _named(docs, "ConfigMap", "-rules")
        config = yaml.safe_load(_named(docs, "ConfigMap", "-prometheus")["data"]["prometheus.yml"])
        deployment = _named(docs, "Deployment", "-prometheus")
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["rules"]["configMap"]["name"] == rules["metadata"]["name"]
        (pattern,) = config["rule_files"]
        assert Path(pattern).parent == Path(mounts["rules"])
        assert Path(next(iter(rules["data"]))).match(Path(pattern).name)
        relabel = config["scrape_configs"][0]["relabel_configs"]
        assert {
            "source_labels": ["__meta_kubernetes_pod_label_tierplace_io_tier"],
            "target_label": "tier",
        } in relabel
    # The rule file as the bundled Prometheus reads it is valid (Debian's promtool lacks the
    # Kubernetes service discovery, so the config itself is checked by the install test only).
    rendered = tmp_path / "tierplace.rules.yaml"
    rendered.write_text(rules["data"]["tierplace.rules.yaml"])
    out = subprocess.run(
        [_promtool(), "check", "rules", str(rendered)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr

"""Measure the real-node cluster and write docs/results/real-nodes.json, then the tables of
docs/real-nodes.md from it (between the ``real-nodes-results`` markers).

    .venv/bin/python -m tests.nodes.bench            # ~15 min on two shared cores

What it measures, all in one run on this machine:
- image sizes (what a node imports);
- time from ``kubectl apply`` of the three-tier example to the first answer through its
  router, cold (the cascade's first start) and warm (deleted and applied again);
- per-request latency through the router and the Triton pods against the embedded stack
  (a router process and a local tritonserver with the same weights and the operator's own
  router config), as medians and their ratio over the same reviews;
- the memory of every pod (its cgroup's usage on its node).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from tests.chart.helmkit import EXAMPLES, Helm, helm_path
from tests.e2e.conftest import NAMESPACE, PROMETHEUS, _weights, install_chart
from tests.e2e.examples import BUDGET, REVIEWS
from tests.e2e.kube import Kubectl, embedded_router, infer, outputs
from tests.nodes.cluster import REPO, Images, RealCluster, pools, real_cluster
from tests.nodes.prometheus import cluster_prometheus
from tierplace import paths
from tierplace.local.triton import TritonServer
from tierplace_harness import generated
from tierplace_harness.controlplane import bin_dir

RESULTS = REPO / "docs" / "results" / "real-nodes.json"
DOC = REPO / "docs" / "real-nodes.md"
BEGIN, END = "<!-- real-nodes-results:begin -->", "<!-- real-nodes-results:end -->"
CASCADE = "three-tier"
EXAMPLE = EXAMPLES / "cascade-three-tier.yaml"


def _until(probe: Callable[[], Any], what: str, timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _answer(url: str) -> bool:
    try:
        infer(url, CASCADE, [REVIEWS[0]], timeout=10, headers=BUDGET)
    except (OSError, urllib.error.HTTPError):
        return False
    return True


def _router_url(k: Kubectl) -> str | None:
    svc = k.get("service", f"{CASCADE}-router")
    return f"http://{svc['spec']['clusterIP']}:8080" if svc else None


def _first_answer(k: Kubectl) -> dict[str, float]:
    """Seconds from ``kubectl apply`` to the router's Service, to the first answer, and to
    the cascade's Ready condition."""
    start = time.monotonic()
    k.run("apply", "-f", str(EXAMPLE))
    url = _until(lambda: _router_url(k), "the router Service", 300)
    service_s = time.monotonic() - start
    _until(lambda: _answer(url), "the first answer", 900)
    first_s = time.monotonic() - start

    def ready() -> bool:
        c = k.get("inferencecascade", CASCADE) or {}
        return any(
            x["type"] == "Ready" and x["status"] == "True"
            for x in c.get("status", {}).get("conditions", [])
        )

    _until(ready, "the cascade Ready", 900)
    return {
        "service_s": round(service_s, 1),
        "first_answer_s": round(first_s, 1),
        "ready_s": round(time.monotonic() - start, 1),
    }


def _cascade_objects(k: Kubectl) -> list[str]:
    """What is left of the three-tier cascade: its Deployments and pods, by name."""
    return [
        item["metadata"]["name"]
        for kind in ("deployments", "pods")
        for item in k.items(kind)
        if item["metadata"]["name"].startswith(f"{CASCADE}-")
    ]


def _latencies(url: str, rounds: int) -> tuple[list[float], list[dict[str, Any]]]:
    times, answers = [], []
    for i in range(rounds):
        review = REVIEWS[i % len(REVIEWS)]
        t0 = time.perf_counter()
        out = outputs(infer(url, CASCADE, [review], timeout=30, headers=BUDGET))
        times.append((time.perf_counter() - t0) * 1000)
        answers.append({k: out[k][0] for k in ("LABEL", "TIER", "EXIT_LAYER")})
    return times, answers


def _summary(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=10)
    return {"median_ms": round(statistics.median(ms), 2), "p90_ms": round(q[8], 2)}


def _embedded(k: Kubectl, home: Path, work: Path, rounds: int) -> dict[str, Any]:
    """The same reviews through a local router process over a local tritonserver serving the
    same weights, with the operator's router config (endpoints pointed here)."""
    cm = k.get("configmap", f"{CASCADE}-router")
    assert cm is not None
    models = [t["model"] for t in yaml.safe_load(cm["data"]["router.yaml"])["cascades"][0]["tiers"]]
    prometheus = k.get("service", PROMETHEUS)
    assert prometheus is not None, "no bundled Prometheus"
    prometheus_url = f"http://{prometheus['spec']['clusterIP']}:9090"
    with (
        TritonServer(paths.model_repository(), sorted(set(models)), home) as triton,
        embedded_router(k, CASCADE, triton.http_url, work, prometheus_url) as url,
    ):
        _latencies(url, 10)  # warm-up, not counted
        ms, answers = _latencies(url, rounds)
    return {"latency": _summary(ms), "answers": answers}


def _image_sizes(images: Images) -> dict[str, float]:
    out = {}
    for name, ref in (("tierplace", images.tierplace), ("triton-cpu", images.triton)):
        size = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{.Size}}", ref],
            capture_output=True,
            text=True,
            check=True,
            env={
                **os.environ,
                "CONTAINERS_CONF": str(images.tierplace_tar.parent / "containers.conf"),
            },
        ).stdout.strip()
        out[name] = round(int(size) / 2**20, 1)
    return out


def _pod_memory(k: Kubectl, cluster: RealCluster) -> dict[str, float]:
    """MiB charged to each tierplace pod's cgroup, by pod name."""
    by_uid = {p["metadata"]["uid"]: p["metadata"]["name"] for p in k.items("pods")}
    out: dict[str, float] = {}
    for node in cluster.nodes.values():
        for uid, used in node.pod_memory_bytes().items():
            name = by_uid.get(uid)
            if name:
                out[name] = round(used / 2**20, 1)
    return dict(sorted(out.items()))


def measure(work: Path, rounds: int) -> dict[str, Any]:
    from tierplace.model.tiny import make_tiny_home

    home = make_tiny_home(work / "tiny-home")
    weights = _weights(home)
    images = Images.build()
    result: dict[str, Any] = {"images_mib": _image_sizes(images)}
    try:
        t0 = time.monotonic()
        with contextlib.ExitStack() as stack:
            cluster = stack.enter_context(real_cluster(work / "cluster", images))
            result["cluster_up_s"] = round(time.monotonic() - t0, 1)
            k = Kubectl(cluster.kubeconfig, NAMESPACE, str(bin_dir() / "kubectl"))
            k.run("label", "node", "system-0", "node-role.kubernetes.io/control-plane=")
            for node, pool in pools().items():
                k.run("label", "node", node, f"tierplace.io/pool={pool}")
                k.run("taint", "node", node, f"tierplace.io/pool={pool}:NoSchedule")
            t1 = time.monotonic()
            helm = Helm(helm_path(), work / "helm", cluster.kubeconfig)
            prometheus = stack.enter_context(
                cluster_prometheus(cluster.network, cluster.cp.request, helm, work)
            )
            install_chart(cluster, helm, weights, prometheus)
            _until(
                lambda: (
                    k.items("pods", "app.kubernetes.io/component=operator")
                    and all(
                        c["status"] == "True"
                        for p in k.items("pods", "app.kubernetes.io/component=operator")
                        for c in p.get("status", {}).get("conditions", [])
                        if c["type"] == "Ready"
                    )
                ),
                "the operator Ready",
                300,
            )
            result["helm_install_to_operator_ready_s"] = round(time.monotonic() - t1, 1)
            steps = tqdm(total=4, desc="real-node bench", unit="step")
            result["apply_to_answer"] = {"cold": _first_answer(k)}
            steps.update()
            k.run("delete", "-f", str(EXAMPLE), "--wait=true", timeout=300)
            _until(lambda: not _cascade_objects(k), "the cascade's deployments and pods gone", 300)
            result["apply_to_answer"]["warm"] = _first_answer(k)
            steps.update()
            url = _router_url(k)
            assert url is not None
            _latencies(url, 10)  # warm-up, not counted
            pods_ms, pod_answers = _latencies(url, rounds)
            steps.update()
            embedded = _embedded(k, home, work, rounds)
            steps.update()
            steps.close()
            same = sum(a == b for a, b in zip(pod_answers, embedded["answers"], strict=True))
            result["latency"] = {
                "requests": rounds,
                "budget_ms": int(BUDGET["X-Latency-Budget-Ms"]),
                "pods": _summary(pods_ms),
                "embedded": embedded["latency"],
                "ratio_median": round(
                    _summary(pods_ms)["median_ms"] / embedded["latency"]["median_ms"], 2
                ),
                "same_answers": f"{same}/{rounds}",
            }
            k.run("apply", "-f", str(EXAMPLES))
            _until(lambda: len(k.items("pods", "tierplace.io/component=triton")) >= 9, "pods", 300)
            _until(
                lambda: all(
                    c["status"] == "True"
                    for p in k.items("pods")
                    for c in p.get("status", {}).get("conditions", [])
                    if c["type"] == "Ready"
                ),
                "every pod Ready",
                900,
            )
            result["pod_memory_mib"] = _pod_memory(k, cluster)
    finally:
        shutil.rmtree(weights, ignore_errors=True)
    result["machine"] = {"cores": _cores(), "nodes": len(pools()) + 1}
    return result


def _cores() -> int:
    return os.cpu_count() or 0


def markdown(result: dict[str, Any]) -> str:
    lat = result["latency"]
    cold, warm = result["apply_to_answer"]["cold"], result["apply_to_answer"]["warm"]
    lines = [
        BEGIN,
        "",
        f"One run of `python -m tests.nodes.bench` ({result['machine']['nodes']} nodes on "
        f"{result['machine']['cores']} shared cores, tiny variants); "
        "`docs/results/real-nodes.json` has every number.",
        "",
        "| from `kubectl apply` of the three-tier example | router Service | first answer "
        "| cascade Ready |",
        "|---|---|---|---|",
        f"| cold (first start) | {cold['service_s']} s | {cold['first_answer_s']} s "
        f"| {cold['ready_s']} s |",
        f"| warm (deleted, applied again) | {warm['service_s']} s | {warm['first_answer_s']} s "
        f"| {warm['ready_s']} s |",
        "",
        f"Per request, {lat['requests']} single reviews one at a time, budget "
        f"{lat['budget_ms']} ms:",
        "",
        "| path | median | p90 |",
        "|---|---|---|",
        f"| router and Triton pods (Service IPs, kube-proxy) | {lat['pods']['median_ms']} ms "
        f"| {lat['pods']['p90_ms']} ms |",
        f"| embedded stack (router process, local tritonserver, no emulated links) "
        f"| {lat['embedded']['median_ms']} ms | {lat['embedded']['p90_ms']} ms |",
        f"| ratio of medians | {lat['ratio_median']} | |",
        "",
        f"Same label, tier and exit on both paths: {lat['same_answers']} requests.",
        "",
        "| image | size |",
        "|---|---|",
        *(f"| `tierplace/{k}` | {v} MiB |" for k, v in result["images_mib"].items()),
        "",
        "| pod (all examples applied) | memory |",
        "|---|---|",
        *(f"| {k} | {v} MiB |" for k, v in result["pod_memory_mib"].items()),
        "",
        END,
    ]
    return "\n".join(lines)


def render(result: dict[str, Any], doc: Path = DOC) -> None:
    generated.replace(doc, BEGIN, END, markdown(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--render-only", action="store_true", help="regenerate the doc from the JSON"
    )
    args = parser.parse_args()
    if not args.render_only:
        with tempfile.TemporaryDirectory(prefix="tierplace-nodes-bench-") as work:
            result = measure(Path(work), args.rounds)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    render(json.loads(args.out.read_text()))
    print(f"wrote {args.out} and {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

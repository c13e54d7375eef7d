"""End to end on this machine: a real control plane, three node pools, the operator, and the
example cascade; prints what ``kubectl get`` shows, then tears everything down.

    .venv/bin/python e2e/local/operator_demo.py            # run and clean up
    .venv/bin/python e2e/local/operator_demo.py --keep     # leave it up; prints KUBECONFIG

Needs scripts/build-control-plane.sh to have run once (the binaries are cached).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tierplace_harness import cluster
from tierplace_harness.controlplane import ControlPlane, control_plane
from tierplace_harness.operator_process import OperatorProcess

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
POOLS = {"device": "620Mi", "edge": "700Mi", "cloud": "8Gi"}


def show(cp: ControlPlane, *args: str) -> None:
    if shutil.which("kubectl") is None:
        return
    out = subprocess.run(
        ["kubectl", *args], env=cp.env(), capture_output=True, text=True, check=False
    )
    print(f"$ kubectl {' '.join(args)}\n{out.stdout}{out.stderr if out.returncode else ''}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep running until Ctrl-C")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="tierplace-e2e-") as tmp,
        control_plane(workdir=Path(tmp) / "cp") as cp,
    ):
        cluster.apply_crds(cp, REPO / "crds")
        for pool, memory in POOLS.items():
            cluster.create_node(cp, cluster.pool_node(f"{pool}-0", pool, memory))
        # An untainted node outside the pools, where the router can run.
        cluster.create_node(cp, cluster.pool_node("system-0", "system", "4Gi", taint=False))
        cluster.create_namespace(cp, "demo")
        operator = OperatorProcess(
            {**cp.env(), "TIERPLACE_RESYNC_SECONDS": "3"}, Path(tmp) / "operator.log"
        )
        operator.start()
        try:
            body = yaml.safe_load((HERE / "cascade.yaml").read_text())
            code, out = cp.request(
                "POST", "/apis/tierplace.io/v1alpha1/namespaces/demo/inferencecascades", body
            )
            if code != 201:
                print(f"cascade refused ({code}): {out}", file=sys.stderr)
                return 1

            def placed() -> bool:
                _, c = cp.request(
                    "GET", "/apis/tierplace.io/v1alpha1/namespaces/demo/inferencecascades/sentiment"
                )
                tiers = (c.get("status") or {}).get("tiers", [])
                return len(tiers) == 3 and all(t.get("variant") for t in tiers)

            cluster.wait_for(placed, 60, "three placed tiers")
            time.sleep(4)  # one drift-timer pass records the nodes the pods landed on
            show(cp, "get", "inferencecascades,inferencetiers", "-n", "demo", "-o", "wide")
            show(cp, "get", "pods", "-n", "demo", "-o", "wide")
            show(cp, "get", "configmap", "sentiment-router", "-n", "demo", "-o", "yaml")
            if args.keep:
                print(f"export KUBECONFIG={cp.kubeconfig}   # Ctrl-C to tear down")
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
        finally:
            operator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

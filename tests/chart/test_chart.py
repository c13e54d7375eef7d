"""The chart, offline: lint, render every values file, validate what it renders, and check that
what it promises (CRDs, RBAC, webhooks, certificates) matches the operator it installs."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.chart.helmkit import CHART, CRDS, REPO, VALUES_FILES, Helm
from tierplace.controller import config, handlers, rbac

#: The oldest and newest schemas kubernetes-validate ships (the chart also installs on the
#: 1.20 control plane: tests/chart/test_install.py).
KUBE_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]
STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)
#: Every optional part switched on at once, so that each template is rendered and validated.
EVERYTHING = {
    "prometheus.bundled.enabled": "true",
    "weights.job.enabled": "true",
    "weights.persistence.hostPath": "/srv/tierplace/models",
    "operator.watchNamespaces[0]": "tierplace",
}


def _ids(paths: list[Path]) -> list[str]:
    return [p.name if p.parent == CHART else f"ci/{p.name}" for p in paths]


def _kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("values", VALUES_FILES, ids=_ids(VALUES_FILES))
def test_helm_lint_strict(helm: Helm, values: Path) -> None:
    out = helm.run("lint", "--strict", str(CHART), "--values", str(values))
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("values", VALUES_FILES, ids=_ids(VALUES_FILES))
def test_rendered_builtin_kinds_are_valid_kubernetes(helm: Helm, values: Path) -> None:
    docs = helm.template([values]) + helm.template([values], sets=EVERYTHING)
    assert {"Deployment", "ServiceAccount", "ClusterRole", "Secret"} <= {d["kind"] for d in docs}
    failures = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        missing = [k for k in STANDARD_LABELS if k not in doc["metadata"].get("labels", {})]
        if missing:
            failures.append(f"{where}: no label {', '.join(missing)}")
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                failures.append(f"{where} (Kubernetes {version}): {exc.message}")
    assert not failures, "\n".join(failures)


def test_chart_crds_are_byte_identical_to_the_top_level_crds() -> None:
    top = {p.name: p.read_bytes() for p in sorted(CRDS.glob("*.yaml"))}
    chart = {p.name: p.read_bytes() for p in sorted((CHART / "crds").iterdir())}
    assert top, "no CRDs in crds/"
    assert chart.keys() == top.keys(), "run: cp crds/*.yaml charts/tierplace/crds/"
    stale = [name for name in top if chart[name] != top[name]]
    assert not stale, f"stale chart CRDs {stale}: run cp crds/*.yaml charts/tierplace/crds/"


def test_cluster_role_is_exactly_the_operators_least_privilege_rules(helm: Helm) -> None:
    docs = helm.template()
    (role,) = [r for r in _kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("operator")]
    assert role["rules"] == rbac.rules(manage_webhooks=False)  # the chart owns the webhooks
    granted = {r for rule in role["rules"] for r in rule["resources"]}
    assert "validatingwebhookconfigurations" not in granted
    (binding,) = _kind(docs, "ClusterRoleBinding")
    (account,) = _kind(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "tierplace"}
    ]
    (deployment,) = _kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert not _kind(docs, "Role") and not _kind(docs, "RoleBinding")


def test_watched_namespaces_get_roles_and_only_cluster_scoped_rules_stay_cluster_wide(
    helm: Helm,
) -> None:
    """operator.watchNamespaces: the operator watches only those (--namespace) and may write
    only there; what its ClusterRole still grants is read access to cluster-scoped kinds."""
    watched = ["team-a", "team-b"]
    docs = helm.template(sets={f"operator.watchNamespaces[{i}]": n for i, n in enumerate(watched)})
    (account,) = _kind(docs, "ServiceAccount")
    subject = {
        "kind": "ServiceAccount",
        "name": account["metadata"]["name"],
        "namespace": "tierplace",
    }
    (role,) = [r for r in _kind(docs, "ClusterRole") if r["metadata"]["name"].endswith("operator")]
    assert (
        role["rules"] == rbac.cluster_role(manage_webhooks=False, watch_namespaces=watched)["rules"]
    )
    assert {v for rule in role["rules"] for v in rule["verbs"]} <= {"get", "list", "watch"}
    roles = _kind(docs, "Role")
    assert [r["metadata"]["namespace"] for r in roles] == watched
    for r in roles:
        assert r["rules"] == rbac.role(r["metadata"]["namespace"])["rules"]
        assert r["metadata"]["name"] == role["metadata"]["name"]
    bindings = _kind(docs, "RoleBinding")
    assert [b["metadata"]["namespace"] for b in bindings] == watched
    for b in bindings:
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert b["subjects"] == [subject]
    (deployment,) = _kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        f"--namespace={n}" for n in watched
    ]


def test_operator_runs_non_root_with_a_read_only_root_filesystem(helm: Helm) -> None:
    (deployment,) = _kind(helm.template(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["args"][:2] == ["tierplace", "operator"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def _operator_webhooks() -> dict[str, str]:
    """handler id -> validating|mutating, as the operator registers them with a webhook server."""
    cfg = config.from_env(
        {
            "TIERPLACE_WEBHOOK_PORT": "9443",
            "TIERPLACE_WEBHOOK_CERT": "unused",
            "TIERPLACE_WEBHOOK_KEY": "unused",
        }
    )
    hs = handlers.registry(cfg)._webhooks.get_all_handlers()
    return {str(h.id): h.reason.value for h in hs}


def test_webhook_configurations_route_to_every_operator_handler(helm: Helm) -> None:
    docs = helm.template()
    (service,) = [s for s in _kind(docs, "Service") if s["metadata"]["name"].endswith("webhook")]
    rendered = {}
    for kind, reason in (
        ("ValidatingWebhookConfiguration", "validating"),
        ("MutatingWebhookConfiguration", "mutating"),
    ):
        (config,) = _kind(docs, kind)
        for hook in config["webhooks"]:
            ref = hook["clientConfig"]["service"]
            assert (ref["name"], ref["namespace"]) == (service["metadata"]["name"], "tierplace")
            assert ref["port"] == service["spec"]["ports"][0]["port"]
            assert hook["name"] == f"{ref['path'].lstrip('/')}.tierplace.io"
            # Never the status subresource: the operator's status writes are not admitted
            # through its own webhook, so a bad spec that slipped in cannot block them.
            resources = [r for rule in hook["rules"] for r in rule["resources"]]
            assert resources and not [r for r in resources if "/" in r], resources
            rendered[ref["path"].lstrip("/")] = reason
    assert rendered == _operator_webhooks()


def _openssl(*args: str, stdin: bytes | None = None) -> str:
    out = subprocess.run(["openssl", *args], input=stdin, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


def test_webhook_ca_bundle_verifies_the_serving_certificate(helm: Helm, tmp_path: Path) -> None:
    docs = helm.template(release="tp", namespace="infra")
    (secret,) = _kind(docs, "Secret")
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    for kind in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"):
        (config,) = _kind(docs, kind)
        for hook in config["webhooks"]:
            assert base64.b64decode(hook["clientConfig"]["caBundle"]) == data["ca.crt"]
    (tmp_path / "ca.crt").write_bytes(data["ca.crt"])
    (tmp_path / "tls.crt").write_bytes(data["tls.crt"])
    verified = _openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "tls.crt"))
    assert verified.strip().endswith(": OK")
    sans = _openssl("x509", "-noout", "-ext", "subjectAltName", "-in", str(tmp_path / "tls.crt"))
    assert "DNS:tp-tierplace-webhook.infra.svc" in sans
    # The key in the Secret is the certificate's key.
    cert_pub = _openssl("x509", "-noout", "-pubkey", "-in", str(tmp_path / "tls.crt"))
    key_pub = _openssl("pkey", "-pubout", stdin=data["tls.key"])
    assert cert_pub == key_pub


def test_bundled_prometheus_is_optional_and_scrapes_annotated_pods(helm: Helm) -> None:
    assert not [d for d in helm.template() if "prometheus" in d["metadata"]["name"]]
    docs = helm.template(sets={"prometheus.bundled.enabled": "true"})
    (config,) = [
        c for c in _kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("prometheus")
    ]
    assert (
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape" in config["data"]["prometheus.yml"]
    )
    (operator,) = [
        d for d in _kind(docs, "Deployment") if d["metadata"]["name"].endswith("operator")
    ]
    env = {
        e["name"]: e["value"] for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["TIERPLACE_PROMETHEUS_URL"] == "http://tierplace-prometheus.tierplace.svc:9090"
    external = helm.template(sets={"prometheus.externalUrl": "http://prom.monitoring:9090"})
    (operator,) = _kind(external, "Deployment")
    env = {
        e["name"]: e["value"] for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["TIERPLACE_PROMETHEUS_URL"] == "http://prom.monitoring:9090"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("operator.replicas", "2", "/operator/replicas"),
        ("webhook.failurePolicy", "Sometimes", "/webhook/failurePolicy"),
        ("prometheus.externalUrl", "prom:9090", "/prometheus/externalUrl"),
        ("operator.replica", "1", "replica"),
        ("defaultImages.triton.repository", "", "/defaultImages/triton/repository"),
        ("defaultImages.router.registry", "r", "registry"),
    ],
)
def test_values_schema_rejects_bad_values_with_the_key(
    helm: Helm, key: str, value: str, message: str
) -> None:
    out = helm.run("template", "t", str(CHART), "--set", f"{key}={value}", check=False)
    assert out.returncode != 0
    assert message in out.stderr


def _operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (operator,) = [
        d for d in _kind(docs, "Deployment") if d["metadata"]["name"].endswith("operator")
    ]
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def test_operator_serves_the_webhooks_the_chart_owns_and_gets_its_defaults(helm: Helm) -> None:
    """What the chart sets is what the operator reads (tierplace.controller.config): it
    leaves the chart's webhook configurations alone and fills unset images and Prometheus."""
    docs = helm.template(sets={"prometheus.bundled.enabled": "true"})
    (operator,) = [
        d for d in _kind(docs, "Deployment") if d["metadata"]["name"].endswith("operator")
    ]
    operator_image = operator["spec"]["template"]["spec"]["containers"][0]["image"]
    settings = config.from_env(_operator_env(docs))
    assert settings.webhook is not None and settings.webhook.managed is False
    assert settings.webhook.port == 9443
    assert settings.defaults == config.SpecDefaults(
        triton_image="tierplace/triton-cpu:0.1.0",
        router_image=operator_image,  # one image runs the operator and `tierplace route`
        prometheus_url="http://tierplace-prometheus.tierplace.svc:9090",
    )
    custom = helm.template(
        sets={
            "image.tag": "2.0.0",
            "defaultImages.triton.repository": "registry.example/triton-gpu",
            "defaultImages.triton.tag": "2.0.0-cu128",
            "webhook.enabled": "false",
        }
    )
    settings = config.from_env(_operator_env(custom))
    assert settings.webhook is None
    assert settings.defaults == config.SpecDefaults(
        triton_image="registry.example/triton-gpu:2.0.0-cu128",
        router_image="tierplace/tierplace:2.0.0",
        prometheus_url=None,
    )
    router = helm.template(sets={"defaultImages.router.repository": "registry.example/router"})
    assert config.from_env(_operator_env(router)).defaults.router_image == (
        "registry.example/router:0.1.0"
    )


def test_operator_caps_glibc_malloc_arenas(helm: Helm) -> None:
    """Two malloc arenas instead of one per thread (the client's pool has 16): most of the
    operator's memory beyond Python objects was glibc's arenas (docs/operating-at-scale.md)."""
    assert _operator_env(helm.template())["MALLOC_ARENA_MAX"] == "2"


def test_kind_values_give_created_tiers_and_routers_the_images_kind_loads(helm: Helm) -> None:
    """e2e/kind loads its images under their own names only: the chart must hand exactly
    those to the operator, or created Triton and router pods never start."""
    lib = (REPO / "e2e" / "kind" / "lib.sh").read_text()
    assigned = dict(re.findall(r"^([A-Z_]+)=(\S+)$", lib, re.MULTILINE))

    def image(var: str) -> str:
        return assigned[var].replace("$VERSION", assigned["VERSION"])

    docs = helm.template([CHART / "ci" / "kind-values.yaml"])
    defaults = config.from_env(_operator_env(docs)).defaults
    assert defaults.triton_image == image("IMAGE_TRITON")
    assert defaults.router_image == image("IMAGE_TIERPLACE")

"""The operator's settings from its environment (pure: a mapping in, frozen values out).

``tierplace operator`` lays its flags over these variables (without writing the process
environment), builds one ``OperatorConfig`` before kopf starts (a bad value is refused there)
and passes it to ``handlers.run``:

  TIERPLACE_RESYNC_SECONDS   drift timer interval (default 300): a safety net only, since
                             the events of tiers, cascades, their children, their pods and
                             Nodes requeue what they concern
  TIERPLACE_WEBHOOK_PORT     when set, serve admission webhooks on this port, with
  TIERPLACE_WEBHOOK_CERT / _KEY (required), _CA, _ADDR (default 127.0.0.1), _HOST
  TIERPLACE_WEBHOOK_MANAGED  true (default): kopf creates and patches the webhook
                             configurations named tierplace.io itself (and empties them on
                             exit); false: it only serves, and whoever installed the operator
                             (the Helm chart) owns the configurations
  TIERPLACE_TRITON_IMAGE     image of Triton Deployments whose spec.triton.image is unset
  TIERPLACE_ROUTER_IMAGE     image of router Deployments whose spec.router.image is unset
  TIERPLACE_PROMETHEUS_URL   Prometheus of cascades whose spec.prometheusUrl is unset
  TIERPLACE_METRICS_PORT     when set, serve the operator's own metrics (controller/metrics.py)
                             on this port at /metrics, listening on
  TIERPLACE_METRICS_ADDR     (default 127.0.0.1; the chart sets 0.0.0.0)

Precedence for the three defaults: the spec's own value, then the operator's variable, then
the built-in default. The CRDs give these fields no schema default on purpose: a value the
API server filled in could not be told apart from one the user chose, so changing the
operator's default would never reach existing objects. It does now: a new
TIERPLACE_TRITON_IMAGE rolls every tier that leaves its image unset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from tierplace.api.models import (
    DEFAULT_ROUTER_IMAGE,
    DEFAULT_TRITON_IMAGE,
    InferenceCascadeSpec,
    InferenceTierSpec,
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_URL = re.compile(r"^https?://\S+$")


@dataclass(frozen=True)
class SpecDefaults:
    """What the operator fills in where a spec leaves a field unset."""

    #: The Triton image of a tier with no ``spec.triton.image``.
    triton_image: str = DEFAULT_TRITON_IMAGE
    #: The router image of a cascade with no ``spec.router.image``.
    router_image: str = DEFAULT_ROUTER_IMAGE
    #: The Prometheus of a cascade with no ``spec.prometheusUrl``; None: no Prometheus.
    prometheus_url: str | None = None

    def tier_image(self, spec: InferenceTierSpec) -> str:
        return spec.triton.image or self.triton_image

    def cascade_router_image(self, spec: InferenceCascadeSpec) -> str:
        return spec.router.image or self.router_image

    def cascade_prometheus_url(self, spec: InferenceCascadeSpec) -> str | None:
        return spec.prometheus_url or self.prometheus_url


@dataclass(frozen=True)
class WebhookConfig:
    """The admission webhook server (kopf's ``WebhookServer``) and who owns its
    Validating/MutatingWebhookConfiguration objects."""

    port: int
    certfile: str
    pkeyfile: str
    cafile: str | None = None
    #: Listen address.
    addr: str = "127.0.0.1"
    #: The host the API server calls (kopf puts it in the configurations it manages).
    host: str = "127.0.0.1"
    #: True: kopf creates and patches the configurations; False: someone else owns them.
    managed: bool = True


@dataclass(frozen=True)
class OperatorConfig:
    resync_seconds: float = 300.0
    #: None: no webhook server and no admission handlers.
    webhook: WebhookConfig | None = None
    defaults: SpecDefaults = field(default_factory=SpecDefaults)
    #: None: the operator's metrics are not served.
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"


def _port(env: Mapping[str, str], name: str, flag: str) -> int | None:
    text = _text(env, name)
    if text is None:
        return None
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ValueError(f"{name}={text!r}: use a port from 1 to 65535 ({flag})")
    return port


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{name}={env[name]!r}: use true or false")


def _text(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name, "").strip() or None


def _webhook(env: Mapping[str, str]) -> WebhookConfig | None:
    port_text = _text(env, "TIERPLACE_WEBHOOK_PORT")
    if port_text is None:
        return None
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ValueError(f"TIERPLACE_WEBHOOK_PORT={port_text!r}: use a port from 1 to 65535")
    cert, key = _text(env, "TIERPLACE_WEBHOOK_CERT"), _text(env, "TIERPLACE_WEBHOOK_KEY")
    if cert is None or key is None:
        raise ValueError("--webhook-port needs --webhook-cert and --webhook-key")
    return WebhookConfig(
        port=port,
        certfile=cert,
        pkeyfile=key,
        cafile=_text(env, "TIERPLACE_WEBHOOK_CA"),
        addr=_text(env, "TIERPLACE_WEBHOOK_ADDR") or "127.0.0.1",
        host=_text(env, "TIERPLACE_WEBHOOK_HOST") or "127.0.0.1",
        managed=_flag(env, "TIERPLACE_WEBHOOK_MANAGED", True),
    )


def _defaults(env: Mapping[str, str]) -> SpecDefaults:
    prometheus = _text(env, "TIERPLACE_PROMETHEUS_URL")
    if prometheus is not None and not _URL.match(prometheus):
        raise ValueError(
            f"TIERPLACE_PROMETHEUS_URL={prometheus!r}: use an http:// or https:// URL, "
            "e.g. http://prometheus.monitoring.svc:9090"
        )
    return SpecDefaults(
        triton_image=_text(env, "TIERPLACE_TRITON_IMAGE") or DEFAULT_TRITON_IMAGE,
        router_image=_text(env, "TIERPLACE_ROUTER_IMAGE") or DEFAULT_ROUTER_IMAGE,
        prometheus_url=prometheus,
    )


def from_env(env: Mapping[str, str]) -> OperatorConfig:
    """The settings in ``env``; raises ValueError naming the variable and what to set."""
    resync_text = _text(env, "TIERPLACE_RESYNC_SECONDS") or "300"
    try:
        resync = float(resync_text)
    except ValueError:
        resync = 0.0
    if not resync > 0:
        raise ValueError(f"TIERPLACE_RESYNC_SECONDS={resync_text!r}: use a positive number")
    return OperatorConfig(
        resync_seconds=resync,
        webhook=_webhook(env),
        defaults=_defaults(env),
        metrics_port=_port(env, "TIERPLACE_METRICS_PORT", "--metrics-port"),
        metrics_addr=_text(env, "TIERPLACE_METRICS_ADDR") or "127.0.0.1",
    )

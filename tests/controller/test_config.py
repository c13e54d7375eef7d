"""The operator's settings from its environment: what the Helm chart (or a developer) sets, what
the operator then does, and how it refuses a bad value before it starts."""

from __future__ import annotations

import os

import pytest
import yaml

from tierplace.api.models import DEFAULT_ROUTER_IMAGE, DEFAULT_TRITON_IMAGE
from tierplace.controller import config
from tierplace.controller.__main__ import main as controller_main

WEBHOOK = {
    "TIERPLACE_WEBHOOK_PORT": "9443",
    "TIERPLACE_WEBHOOK_CERT": "/etc/tierplace/webhook/tls.crt",
    "TIERPLACE_WEBHOOK_KEY": "/etc/tierplace/webhook/tls.key",
}


def test_nothing_set_means_no_webhooks_builtin_images_and_no_prometheus() -> None:
    settings = config.from_env({})
    assert settings.resync_seconds == 300
    assert settings.webhook is None
    assert settings.defaults == config.SpecDefaults(
        DEFAULT_TRITON_IMAGE, DEFAULT_ROUTER_IMAGE, None
    )


def test_kopf_manages_the_webhook_configurations_unless_told_false() -> None:
    managed = config.from_env(WEBHOOK).webhook
    assert managed is not None and managed.managed is True
    assert (managed.port, managed.addr, managed.host) == (9443, "127.0.0.1", "127.0.0.1")
    for value in ("false", "False", "0", "no", "off"):
        hook = config.from_env({**WEBHOOK, "TIERPLACE_WEBHOOK_MANAGED": value}).webhook
        assert hook is not None and hook.managed is False, value
        assert hook.certfile == WEBHOOK["TIERPLACE_WEBHOOK_CERT"]  # still served
    hook = config.from_env({**WEBHOOK, "TIERPLACE_WEBHOOK_MANAGED": "true"}).webhook
    assert hook is not None and hook.managed is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({**WEBHOOK, "TIERPLACE_WEBHOOK_MANAGED": "maybe"}, "TIERPLACE_WEBHOOK_MANAGED='maybe'"),
        (
            {"TIERPLACE_WEBHOOK_PORT": "9443"},
            "--webhook-port needs --webhook-cert and --webhook-key",
        ),
        ({**WEBHOOK, "TIERPLACE_WEBHOOK_PORT": "http"}, "use a port from 1 to 65535"),
        ({"TIERPLACE_PROMETHEUS_URL": "prometheus:9090"}, "use an http:// or https:// URL"),
        ({"TIERPLACE_RESYNC_SECONDS": "0"}, "TIERPLACE_RESYNC_SECONDS='0'"),
    ],
)
def test_bad_values_are_refused_with_the_variable_and_the_fix(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError) as err:
        config.from_env(env)
    assert message in str(err.value)


def test_operator_command_refuses_a_bad_value_before_starting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in WEBHOOK.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TIERPLACE_WEBHOOK_MANAGED", "sometimes")
    with pytest.raises(SystemExit) as err:
        controller_main(["operator"])
    assert "TIERPLACE_WEBHOOK_MANAGED='sometimes': use true or false" in str(err.value.code)
    # The flag wins over the variable (the bad value is no longer read), and the process
    # environment is left as it was: settings travel as one explicit OperatorConfig.
    monkeypatch.setenv("TIERPLACE_RESYNC_SECONDS", "-1")  # stop before kopf starts
    with pytest.raises(SystemExit) as err:
        controller_main(["operator", "--no-webhook-managed"])
    assert "TIERPLACE_RESYNC_SECONDS" in str(err.value.code)
    assert os.environ["TIERPLACE_WEBHOOK_MANAGED"] == "sometimes"


def test_operator_defaults_fill_only_what_a_spec_leaves_unset() -> None:
    env = {
        "TIERPLACE_TRITON_IMAGE": "registry.example/triton-cpu:1.2",
        "TIERPLACE_ROUTER_IMAGE": "registry.example/tierplace:1.2",
        "TIERPLACE_PROMETHEUS_URL": "http://prometheus.monitoring.svc:9090",
    }
    assert config.from_env(env).defaults == config.SpecDefaults(
        "registry.example/triton-cpu:1.2",
        "registry.example/tierplace:1.2",
        "http://prometheus.monitoring.svc:9090",
    )
    # Empty variables (a chart value left blank) mean unset, not an empty image.
    blank = {key: "" for key in env}
    assert config.from_env(blank).defaults == config.SpecDefaults()


def test_print_rbac_without_managed_webhooks_grants_no_webhook_access(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def resources(argv: list[str]) -> set[str]:
        assert controller_main(["operator", "--print-rbac", "tierplace/operator", *argv]) == 0
        role, _ = yaml.safe_load_all(capsys.readouterr().out)
        return {r for rule in role["rules"] for r in rule["resources"]}

    assert "validatingwebhookconfigurations" in resources([])
    unmanaged = resources(["--no-webhook-managed"])
    assert "validatingwebhookconfigurations" not in unmanaged
    assert "inferencetiers" in unmanaged

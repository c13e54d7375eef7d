"""Traces across tiers: a span per request, a child span per tier call, W3C context in and out.

A request's ``traceparent``/``tracestate`` (REST headers or gRPC metadata) parent its span;
each tier call is a CLIENT span under it, and its own ``traceparent`` goes to that tier's
Triton, so a trace shows the request's path device -> edge -> cloud with what each tier did.
docs/protocol.md ("Tracing") lists the spans, attributes and variables.

Configured by the standard OpenTelemetry variables, nothing of ours:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) turns tracing on with the
OTLP/HTTP exporter; ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, ``none``),
``OTEL_SDK_DISABLED``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_PROPAGATORS`` and the exporter's own variables mean what the
specification says. With none of them set, ``from_env`` returns None and the router holds
None: no tracer provider exists, no span object is made per request, and neither the SDK nor
an exporter is imported; the request path pays one ``is None`` test per request and per tier
call.

The provider is the router's own, not the global one: nothing else in the process traces, and
the router flushes it on shutdown (``Tracing.shutdown``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tierplace import __version__

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider

    from tierplace.router.cascade import Answer
    from tierplace.router.config import TierConfig
    from tierplace.router.tiers import TierError, TierInput

log = logging.getLogger(__name__)

TRACER_NAME = "tierplace.router"
SERVICE_NAME = "tierplace-router"
#: The exporters this router can build; OTLP over gRPC is not installed (its grpcio pin would
#: have to agree with tritonclient's).
EXPORTERS = ("otlp", "console")
OTLP_PROTOCOL = "http/protobuf"

# Attribute names: ours under ``tierplace.``, the OpenTelemetry conventions' where one fits.
CASCADE = "tierplace.cascade"
DOOR = "tierplace.door"
TEXTS = "tierplace.texts"
TEXT_INDEX = "tierplace.text_index"
TIER = "tierplace.tier"
MODEL = "tierplace.model"
INPUT = "tierplace.input"
BYTES_SENT = "tierplace.bytes_sent"
ATTEMPTS = "tierplace.attempts"
EXIT_LAYER = "tierplace.exit_layer"
CONFIDENCE = "tierplace.confidence"
OFFLOAD = "tierplace.offload"
OFFLOAD_REASON = "tierplace.offload_reason"
REASON = "tierplace.reason"
DEGRADED = "tierplace.degraded"
PATH = "tierplace.path"
REFUSAL = "tierplace.refusal"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this router cannot do; says what to change."""


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def exporters(env: Mapping[str, str]) -> tuple[str, ...]:
    """The span exporters ``env`` asks for; empty means tracing is off.

    As the specification reads, except that an unset ``OTEL_TRACES_EXPORTER`` means OTLP only
    when an OTLP endpoint is set (the specification's default is OTLP to localhost, which
    would make every router trace by default)."""
    if _flag(env.get("OTEL_SDK_DISABLED")):
        return ()
    names = tuple(
        n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()
    )
    if not names:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        names = ("otlp",) if endpoint else ()
    if "none" in names:
        return ()
    unknown = sorted(set(names) - set(EXPORTERS))
    if unknown:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}; the router can export to "
            f"{', '.join(EXPORTERS)} (or none)"
        )
    if "otlp" in names:
        protocol = (
            env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or OTLP_PROTOCOL
        )
        if protocol.strip() != OTLP_PROTOCOL:
            raise TracingConfigError(
                f"OTLP protocol {protocol!r} is not installed in the router; use "
                f"OTEL_EXPORTER_OTLP_PROTOCOL={OTLP_PROTOCOL} (port 4318 on a collector)"
            )
    return names


def from_env(env: Mapping[str, str] | None = None) -> Tracing | None:
    """The router's tracing as the OTEL_* variables configure it, or None when they do not.

    The exporters read their own variables (endpoint, headers, timeout, compression) from the
    process environment, as the SDK does."""
    names = exporters(os.environ if env is None else env)
    if not names:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    log.info("tracing on: spans exported to %s", ", ".join(names))
    return Tracing(provider)


class Tracing:
    """The router's tracer; ``request`` starts one request's span."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME, __version__)

    def request(
        self, cascade: str, door: str, texts: int, carrier: Mapping[str, str] | None
    ) -> RequestTrace:
        """The SERVER span of one inference request, the child of the caller's
        ``traceparent`` when ``carrier`` (headers or metadata) holds one."""
        parent = propagate.extract(carrier) if carrier else None
        span = self.tracer.start_span(
            f"infer {cascade}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={CASCADE: cascade, DOOR: door, TEXTS: texts},
        )
        return RequestTrace(self.tracer, span, texts)

    def shutdown(self) -> None:
        """Export what is buffered and stop (blocks up to the exporters' timeouts)."""
        self.provider.shutdown()


class RequestTrace:
    """One request's span; ``tier_call`` makes its children."""

    __slots__ = ("_context", "_texts", "_tracer", "span")

    def __init__(self, tracer: trace.Tracer, span: trace.Span, texts: int) -> None:
        self._tracer = tracer
        self.span = span
        self._texts = texts
        self._context: Context = trace.set_span_in_context(span)

    def tier_call(self, tier: TierConfig, payload: TierInput, text_index: int) -> TierCall:
        """A CLIENT span for a call to ``tier``, with the headers that carry it there."""
        host, _, port = tier.endpoint.rpartition(":")
        attributes: dict[str, str | int] = {
            TIER: tier.name,
            MODEL: tier.model,
            INPUT: "input_ids" if payload.input_ids is not None else "text",
            BYTES_SENT: payload.nbytes,
        }
        if host and port.isdigit():
            attributes[SERVER_ADDRESS], attributes[SERVER_PORT] = host, int(port)
        else:
            attributes[SERVER_ADDRESS] = tier.endpoint
        if self._texts > 1:
            attributes[TEXT_INDEX] = text_index
        span = self._tracer.start_span(
            f"tier {tier.name}", context=self._context, kind=SpanKind.CLIENT, attributes=attributes
        )
        headers: dict[str, str] = {}
        propagate.inject(headers, context=trace.set_span_in_context(span))
        return TierCall(span, headers)

    def skipped(self, tier: str, cause: str, text_index: int) -> None:
        """A tier left out because its breaker is open: an event, there was no call."""
        self.span.add_event("tier skipped", {TIER: tier, ERROR_TYPE: cause, TEXT_INDEX: text_index})

    def answered(self, answers: Sequence[Answer]) -> None:
        """End with the answers: one text's as values, a batch's as arrays (in text order);
        ``tierplace.degraded`` is true when any answer is."""
        span = self.span
        if len(answers) == 1:
            a = answers[0]
            span.set_attributes(
                {
                    TIER: a.tier,
                    EXIT_LAYER: a.exit_layer,
                    REASON: str(a.reason),
                    DEGRADED: a.degraded,
                    PATH: list(a.path),
                }
            )
        else:
            span.set_attributes(
                {
                    TIER: [a.tier for a in answers],
                    EXIT_LAYER: [a.exit_layer for a in answers],
                    REASON: [str(a.reason) for a in answers],
                    DEGRADED: any(a.degraded for a in answers),
                }
            )
        span.end()

    def refused(self, reason: str) -> None:
        """End a request that admission refused (429): the client's to retry, not an error."""
        self.span.set_attribute(REFUSAL, reason)
        self.span.end()

    def failed(self, error_type: str, detail: str) -> None:
        """End a request that no tier answered, or that hit a bug of the router's."""
        self.span.set_attribute(ERROR_TYPE, str(error_type))
        self.span.set_status(Status(StatusCode.ERROR, detail))
        self.span.end()


class TierCall:
    """One tier call's span; ends once the cascade decided what the answer means."""

    __slots__ = ("_end_ns", "attempts", "headers", "span")

    def __init__(self, span: trace.Span, headers: dict[str, str]) -> None:
        self.span = span
        #: What goes to the tier with the request: ``traceparent`` (and ``tracestate``).
        self.headers = headers
        self.attempts = 0
        self._end_ns: int | None = None

    def returned(self) -> None:
        """The tier answered: the span ends now, whatever is added before ``decided``."""
        self._end_ns = time.time_ns()

    def decided(self, exit_layer: int, confidence: float, reason: str, offload: bool) -> None:
        """The policy's verdict on the answer (``reason``): offloaded, or kept."""
        attributes: dict[str, str | int | float | bool] = {
            ATTEMPTS: self.attempts,
            EXIT_LAYER: exit_layer,
            CONFIDENCE: confidence,
            REASON: str(reason),
            OFFLOAD: offload,
        }
        if offload:
            attributes[OFFLOAD_REASON] = str(reason)
        self.span.set_attributes(attributes)
        self.span.end(end_time=self._end_ns)

    def failed(self, error: TierError, offload_reason: str | None) -> None:
        """The call gave no answer; ``offload_reason`` when the request went on upwards."""
        span = self.span
        span.set_attributes({ATTEMPTS: self.attempts, ERROR_TYPE: error.kind})
        if error.status is not None:
            span.set_attribute("http.response.status_code", error.status)
        span.set_attribute(OFFLOAD, offload_reason is not None)
        if offload_reason is not None:
            span.set_attributes({REASON: str(offload_reason), OFFLOAD_REASON: str(offload_reason)})
        span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end()

    def cancelled(self) -> None:
        self.span.set_status(Status(StatusCode.ERROR, "cancelled"))
        self.span.end()

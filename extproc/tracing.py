"""OpenTelemetry tracing, off unless the config has a `tracing` section (the `otel` extra).

The data path's hooks (service.py, chain.py) check `tracer` once per stream and once per plugin call and
do nothing more while it is None, and OpenTelemetry is not even imported then: with tracing off the server
pays one attribute load per check. The OpenTelemetry side is extproc/tracing_otel.py.

`tracer` is process-wide, as the event loop is: every stream of the process reports to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from extproc.config import TracingConfig

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from extproc.tracing_otel import OtelTracer

tracer: OtelTracer | None = None


def start(config: TracingConfig | None) -> None:
    """Export spans as `config` says (OTLP, batched in a thread of the SDK's); None leaves tracing off."""
    if config is not None:
        from extproc.tracing_otel import otlp_provider

        install(otlp_provider(config))


def install(provider: TracerProvider) -> None:
    """Trace into `provider`: an OTLP one from start(), or a test's with an in-memory exporter."""
    global tracer
    from extproc.tracing_otel import OtelTracer

    tracer = OtelTracer(provider)


def stop() -> None:
    """Turn tracing off and send what is still buffered (waits for the exporter, up to its timeout)."""
    global tracer
    current, tracer = tracer, None
    if current is not None:
        current.provider.shutdown()

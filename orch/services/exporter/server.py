"""The exporter's HTTP endpoint: /metrics served from a registry holding only orch's collector."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from prometheus_client import CollectorRegistry, start_http_server

from orch.errors import ConfigInvalid
from orch.services.exporter.collector import StoreCollector
from orch.settings import Settings


def serve(host: str, port: int, settings: Settings, on_listening: Callable[[str], None]) -> None:
    """Serve /metrics on host:port until SIGTERM or SIGINT. The port opens at once; the first read of the
    store's history starts right after, in the background (`orch_exporter_ready` is 0 until it is done)."""
    collector = StoreCollector(settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigInvalid(
            f"cannot listen on {host}:{port} (--host/--port, ORCH_EXPORTER_HOST/ORCH_EXPORTER_PORT): "
            f"{exc.strerror or exc}"
        ) from None
    collector.start_read()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    on_listening(f"http://{host}:{server.server_port}/metrics")
    while not stop.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)

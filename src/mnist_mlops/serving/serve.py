"""`mnist-mlops serve`: the app of serving/app.py on uvicorn, with limits that keep slow or
too many clients from holding the server.

- a connection must send its request headers within `header_timeout_s` (and an idle
  keep-alive connection is closed after as long), its body within the app's body deadline;
- at most `limit_concurrency` connections at once (more get 503);
- a malformed request (bad Content-Length, broken headers) gets a 400 JSON answer.
With --workers N, N processes share the port, each with its own model and batcher.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mnist_mlops.inference.predictor import Predictor
from mnist_mlops.serving.app import ServeOptions, create_app
from mnist_mlops.serving.batcher import BatchOptions

log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 16 * 1024
WORKER_ENV = "MNIST_SERVE_WORKER"   # how --workers N hands its settings to each worker


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float = 5.0     # headers, and idle keep-alive connections
    limit_concurrency: int = 1024     # open connections + requests in progress
    backlog: int = 2048


class JsonH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a header deadline from the first byte, and a JSON
    400 for requests h11 cannot parse (uvicorn answers those in plain text)."""

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()           # the next request's head, on keep-alive

    def _arm_header_deadline(self) -> None:
        # uvicorn's keep-alive timer stops at the first byte: a client trickling or stalling
        # mid-headers (slowloris) would hold the connection for ever
        old = getattr(self, "_head_timer", None)
        if old is not None:
            old.cancel()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._header_deadline)

    def _header_deadline(self) -> None:
        """Close the connection if no complete request head arrived in time."""
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.timeout_keep_alive_handler()

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": "malformed HTTP request: check the request line, the "
                           "headers and Content-Length (a number of bytes)"}).encode()
        for event in (h11.Response(status_code=400, headers=[
                (b"content-type", b"application/json"), (b"connection", b"close"),
                (b"content-length", str(len(body)).encode())]),
                h11.Data(data=body), h11.EndOfMessage()):
            try:
                self.transport.write(self.conn.send(event))
            except h11.LocalProtocolError:       # h11 already in error: raw bytes
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application"
                                     b"/json\r\nconnection: close\r\ncontent-length: "
                                     + str(len(body)).encode() + b"\r\n\r\n" + body)
                break
        self.transport.close()


def config(app: Any, host: str, port: int, limits: Limits, workers: int = 1
           ) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, http=JsonH11Protocol, workers=workers,
                          timeout_keep_alive=int(limits.header_timeout_s),
                          limit_concurrency=limits.limit_concurrency, backlog=limits.backlog,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES, lifespan="on",
                          log_level="warning", access_log=False, factory=workers > 1)


@dataclass(frozen=True)
class Settings:
    """What one server process needs: the model and every option (JSON for --workers)."""
    source: str
    trusted: bool = False
    version: str | None = None
    opts: ServeOptions = field(default_factory=ServeOptions)
    runtime: str = "onnx"


def worker_app() -> Any:
    """The app of one --workers process (uvicorn imports it by name)."""
    raw = json.loads(os.environ[WORKER_ENV])
    settings = Settings(raw["source"], raw["trusted"], raw["version"],
                        ServeOptions(BatchOptions(**raw["opts"].pop("batch")), **raw["opts"]),
                        raw["runtime"])
    return create_app(lambda: _load(settings), settings.opts)[0]


def _load(settings: Settings) -> Predictor:
    # one ONNX Runtime thread per worker: the workers share the cores
    predictor = Predictor(settings.source, trusted=settings.trusted, runtime=settings.runtime,
                          threads=1)
    if settings.version:
        predictor.about["version"] = settings.version
    return predictor


def run(load: Callable[[], Predictor], host: str, port: int, opts: ServeOptions,
        limits: Limits) -> str | None:
    """Serve in this process until Ctrl-C/SIGTERM; the model's load error, if any."""
    app, svc = create_app(load, opts)
    server = uvicorn.Server(config(app, host, port, limits))
    svc.on_load_error = lambda msg: setattr(server, "should_exit", True)
    server.run()
    return svc.load_error


def run_workers(settings: Settings, host: str, port: int, workers: int,
                limits: Limits) -> None:
    """N processes on one port (uvicorn's supervisor), each loading the model itself."""
    os.environ[WORKER_ENV] = json.dumps(asdict(settings))
    uvicorn.run("mnist_mlops.serving.serve:worker_app",
                **_kwargs(config(None, host, port, limits, workers)))


def _kwargs(cfg: uvicorn.Config) -> dict[str, Any]:
    return {"host": cfg.host, "port": cfg.port, "http": cfg.http, "workers": cfg.workers,
            "timeout_keep_alive": cfg.timeout_keep_alive, "backlog": cfg.backlog,
            "limit_concurrency": cfg.limit_concurrency, "factory": True,
            "h11_max_incomplete_event_size": cfg.h11_max_incomplete_event_size,
            "log_level": "warning", "access_log": False}


class ThreadServer:
    """The server on a thread of this process (tests, notebooks): `serve_forever`,
    `shutdown`, `server_close` and `server_address` as http.server's."""

    def __init__(self, predictor: Predictor, host: str, port: int, opts: ServeOptions,
                 limits: Limits) -> None:
        self.sock = socket.create_server((host, port), backlog=limits.backlog)
        self.server_address = self.sock.getsockname()
        app, self.service = create_app(lambda: predictor, opts)
        self.server = uvicorn.Server(config(app, host, self.server_address[1], limits))
        self.done = threading.Event()

    def serve_forever(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.done.set()

    def shutdown(self) -> None:
        self.server.should_exit = True
        self.done.wait(30)

    def server_close(self) -> None:
        self.sock.close()


def make_server(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000,
                max_pending: int | None = None, opts: ServeOptions | None = None
                ) -> ThreadServer:
    """A server for `predictor`, not yet started; `max_pending` bounds the images waiting
    for the model (more get 503)."""
    opts = opts or ServeOptions()
    if max_pending is not None:
        opts = ServeOptions(**{**asdict(opts), "batch": BatchOptions(
            **{**asdict(opts.batch), "max_queue": max_pending})})
    return ThreadServer(predictor, host, port, opts, Limits())


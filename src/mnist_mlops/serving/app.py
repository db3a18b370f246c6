"""The ASGI app behind `mnist-mlops serve`: the drawing page, /predict, MLflow's
/invocations, /info, /health, /ready and /metrics.

The model loads in the background once the server listens (/ready says 503 until it has
loaded and answered a warm-up picture); drawings are decoded and preprocessed in a bounded
thread pool off the event loop; every model call goes through the micro-batcher. Every bad
request gets a 4xx JSON answer, every overload a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mnist_mlops.inference.predictor import Predictor
from mnist_mlops.monitoring.predlog import LogOptions, PredictionLog
from mnist_mlops.serving import inputs
from mnist_mlops.serving.batcher import Batcher, BatchOptions, Overloaded
from mnist_mlops.serving.metrics import Metrics, MetricsMiddleware
from mnist_mlops.serving.predict import NO_DIGIT, UNSURE

log = logging.getLogger(__name__)
# MLflow's error codes (mlflow.protos.databricks_pb2) for the statuses this server answers
ERROR_CODES = {400: "BAD_REQUEST", 404: "ENDPOINT_NOT_FOUND", 405: "BAD_REQUEST",
               408: "BAD_REQUEST", 413: "REQUEST_LIMIT_EXCEEDED",
               503: "TEMPORARILY_UNAVAILABLE"}


@dataclass(frozen=True)
class ServeOptions:
    batch: BatchOptions = field(default_factory=BatchOptions)
    body_timeout_s: float = 10.0   # a request body not received by then: 408, closed
    decode_threads: int = 2        # PNG decode + to_mnist (CPU-bound: about one per core)
    max_decoding: int = 256        # drawings waiting for or in the pool; more get 503
    log: dict[str, Any] | None = None  # the prediction log's LogOptions (monitoring/)


class Refused(Exception):
    """An answer other than 200: its status, message and headers."""

    def __init__(self, status: int, message: str, **headers: str) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


def _busy(why: str) -> Refused:
    return Refused(503, f"busy: {why}; retry", **{"Retry-After": "1"})


class Service:
    """The state the endpoints share: the model (once loaded), batcher, pool, metrics."""

    def __init__(self, load: Callable[[], Predictor], opts: ServeOptions) -> None:
        self.load, self.opts = load, opts
        self.predictor: Predictor | None = None
        self.ready = False
        self.load_error: str | None = None
        self.on_load_error: Callable[[str], None] = lambda msg: None
        self.metrics = Metrics()
        self.pool = ThreadPoolExecutor(opts.decode_threads, thread_name_prefix="decode")
        self.decoding = 0
        self.page = resources.files("mnist_mlops.serving").joinpath("web/index.html"
                                                                    ).read_bytes()
        self.batcher: Batcher | None = None
        self.plog = PredictionLog(LogOptions(**opts.log)) if opts.log else None

    def _predict(self, x: np.ndarray) -> np.ndarray:
        assert self.predictor is not None
        if self.plog is None:
            return self.predictor.predict_proba(x)
        proba, embedding = self.predictor.answer(x)    # both from one model call
        if self.ready:               # the warm-up's blank pictures are not answers
            self.plog.append(x, proba, embedding, self.predictor.about,
                             self.predictor.unsure_flags(proba))
        return proba

    async def start(self) -> None:
        self.batcher = Batcher(self._predict, self.opts.batch,
                               self.metrics.batch_size.observe)
        self.batcher.start()
        try:
            self.predictor = await asyncio.to_thread(self.load)
            self.metrics.set_model(self.predictor.about)
            # warm-up: three batch sizes, so that the compiled predict step is traced for
            # any batch size before the first request (no 100 ms trace under load)
            for n in (1, 2, 3):
                await self.batcher.submit(np.zeros((n, 28, 28), np.uint8))
        except Exception as exc:  # UserError, ModelLoadError, a broken file: say why, stop
            self.load_error = str(exc)
            log.debug("cannot serve: %s", exc)    # `serve` says it once, on exit
            self.on_load_error(self.load_error)
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info("model %s ready", self.predictor.source)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.plog is not None:            # what is queued reaches the log
            await asyncio.to_thread(self.plog.close)

    async def body(self, request: Request, what: str) -> bytes:
        """The request body, at most MAX_BODY bytes however it is sent (a Content-Length
        over the cap is refused at once; a chunked body as soon as it passes the cap),
        received within body_timeout_s. `what` names what the endpoint takes."""
        length = request.headers.get("content-length")
        if length is not None and int(length) > inputs.MAX_BODY:
            raise Refused(413, f"send {what} of at most 5 MiB (Content-Length)",
                          Connection="close")
        # with a Content-Length (checked above), h11 delivers exactly that many bytes; a
        # body without one (chunked) is counted as it streams in
        reading = request.body() if length is not None else _capped(request, what)
        try:
            body = await asyncio.wait_for(reading, self.opts.body_timeout_s)
        except TimeoutError:
            raise Refused(408, f"request body not received within "
                          f"{self.opts.body_timeout_s:g} s", Connection="close") from None
        if not body:
            raise Refused(400, f"empty request: send {what}")
        return body

    async def off_loop(self, fn: Callable[[bytes], Any], body: bytes) -> Any:
        """fn(body) in the decode pool; 503 when too many drawings are already waiting, or
        when this one waited for a thread past the batcher's deadline (its answer would
        come too late: the client is better told to retry)."""
        if self.decoding >= self.opts.max_decoding:
            raise _busy(f"{self.decoding} drawings being decoded")
        self.decoding += 1
        since, deadline = time.monotonic(), self.opts.batch.deadline_s

        def job() -> Any:
            if time.monotonic() - since > deadline:
                raise _busy("waited past the deadline for a decoder")
            return fn(body)
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, job)
        finally:
            self.decoding -= 1

    async def probabilities(self, images: np.ndarray) -> np.ndarray:
        if not self.ready or self.batcher is None:
            raise Refused(503, "the model is loading; retry", **{"Retry-After": "2"})
        try:
            proba = await self.batcher.submit(images)
        except Overloaded as exc:
            raise _busy(str(exc)) from None
        for digit in proba.argmax(axis=1):
            self.metrics.answers.labels(str(int(digit))).inc()
        return proba


async def _capped(request: Request, what: str) -> bytes:
    """The body as it streams in, refused (413) the moment it passes MAX_BODY."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > inputs.MAX_BODY:
            raise Refused(413, f"send {what} of at most 5 MiB", Connection="close")
        chunks.append(chunk)
    return b"".join(chunks)


def error(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    """Every error answer: MLflow's scoring-server shape (`error_code`, `message`), and
    `error` as this server has always said it."""
    return JSONResponse({"error": message, "error_code": ERROR_CODES.get(status, "BAD_REQUEST"),
                         "message": message}, status, headers=headers)


def _svc(request: Request) -> Service:
    return request.app.state.service


def answering(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """handler with every refusal turned into its JSON answer."""
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except inputs.BadRequest as exc:
            return error(str(exc), exc.status)
        except Refused as exc:
            return error(str(exc), exc.status, exc.headers)
        except ClientDisconnect:
            return Response(status_code=499)
        except ValueError:      # a Content-Length that is not a number
            return error("Content-Length must be a number of bytes", 400,
                         {"Connection": "close"})
    return endpoint


async def page(request: Request) -> Response:
    return Response(_svc(request).page, media_type="text/html; charset=utf-8")


async def info(request: Request) -> Response:
    svc = _svc(request)
    about = svc.predictor.about if svc.predictor else {}
    cal = svc.predictor.calibration if svc.predictor else None
    return JSONResponse({"model": svc.predictor.source if svc.predictor else None,
                         **about, "ready": svc.ready,
                         "calibration": asdict(cal) if cal is not None else None,
                         "max_batch": svc.opts.batch.max_batch,
                         "max_wait_ms": svc.opts.batch.max_wait_s * 1000})


async def health(request: Request) -> Response:
    return JSONResponse({"alive": True})


async def ready(request: Request) -> Response:
    svc = _svc(request)
    body = {"ready": svc.ready, **({"error": svc.load_error} if svc.load_error else {})}
    return JSONResponse(body, 200 if svc.ready else 503)


async def metrics(request: Request) -> Response:
    return Response(generate_latest(_svc(request).metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)


async def predict(request: Request) -> Response:
    t0, svc = time.perf_counter(), _svc(request)
    arr = await svc.off_loop(inputs.drawing_to_mnist,
                             await svc.body(request, inputs.EXPECTED_WHAT))
    about = svc.predictor.about if svc.predictor else {}
    if arr is None:
        return JSONResponse({"digit": None, "probabilities": [], "message": NO_DIGIT,
                             "model": about})
    assert svc.predictor is not None       # probabilities() answered: the model is loaded
    calibrated, unsure = svc.predictor.calibrated(await svc.probabilities(arr[None]))
    proba = calibrated[0]
    return JSONResponse({
        "digit": int(proba.argmax()), "probabilities": [round(float(p), 5) for p in proba],
        "unsure": bool(unsure[0]), **({"message": UNSURE} if unsure[0] else {}),
        "model": about, "input": inputs.png_data_url(arr),
        "latency_ms": round((time.perf_counter() - t0) * 1000, 1)})


async def invocations(request: Request) -> Response:
    svc = _svc(request)
    images = inputs.scoring_images(await svc.body(request, inputs.EXPECTED_MLFLOW_WHAT))
    proba = await svc.probabilities(images)
    assert svc.predictor is not None
    # `predictions`: the model's own probabilities, as `mlflow models serve` answers
    return JSONResponse({"predictions": proba.tolist(),
                         "unsure": svc.predictor.calibrated(proba)[1].tolist()})


async def not_found(request: Request, exc: Exception) -> Response:
    return error(f"no endpoint {request.method} {request.url.path}", 404)


async def not_allowed(request: Request, exc: Exception) -> Response:
    return error(f"{request.method} not allowed on {request.url.path}", 405)


ROUTES = [
    Route("/", page), Route("/index.html", page), Route("/info", info),
    Route("/health", health), Route("/ready", ready), Route("/metrics", metrics),
    Route("/predict", answering(predict), methods=["POST"]),
    Route("/invocations", answering(invocations), methods=["POST"]),
]


def create_app(load: Callable[[], Predictor], opts: ServeOptions | None = None
               ) -> tuple[Any, Service]:
    """The ASGI app and its Service; `load` returns the Predictor (run in a thread once
    the server listens)."""
    svc = Service(load, opts or ServeOptions())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loading = asyncio.create_task(svc.start())
        yield
        loading.cancel()
        await svc.stop()

    app = Starlette(routes=ROUTES, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_allowed})
    app.state.service = svc
    return MetricsMiddleware(app, svc.metrics), svc

"""The FastAPI application: the page, the REST API and the guards in front of both.

create_app(config) builds everything from one ServeConfig and keeps it on a ServeContext; the routes are thin:
they check input, then hand the work to models.py (predict), datasets.py, jobs.py, runs.py and plan.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import secrets
import shutil
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from pigeon._version import __version__
from pigeon.calibration import UNKNOWN, present_classes
from pigeon.config import ServeConfig, TrainConfig, build
from pigeon.errors import ConfigError, PigeonError
from pigeon.serve import archives, datasets, jobs, plan, runs, security
from pigeon.serve.batcher import Batcher
from pigeon.serve.context import ServeContext
from pigeon.serve.errors import ApiError
from pigeon.serve.models import ModelRegistry
from pigeon.serve.store import Store

STATIC = Path(__file__).parent / "static"
MB = 1_000_000
OTHER_BODY_CAP = 1 * MB  # JSON bodies of the non-upload routes
INLINE_DECODE_BYTES = 32_000
SET_BY_APP = ("data", "project", "name", "exist_ok", "resume", "verbose", "tensorboard", "mlflow")


class _BodyTooLarge(Exception):
    pass


def _cap_for(path: str, config: ServeConfig) -> int:
    if security.is_predict(path):
        return int(config.max_request_mb * MB)
    if path == "/api/v1/datasets":
        return int(config.max_upload_mb * MB)
    return OTHER_BODY_CAP


class Guard:
    """Pure ASGI middleware: Host, token, CSRF/Origin, the streamed body cap, and the request metrics.

    The body is counted as it arrives, whatever Content-Length claims, and the request ends with 413 the moment
    it passes the route's cap; nothing beyond the cap is read.
    """

    def __init__(self, app: Any, ctx: ServeContext) -> None:
        self.app, self.ctx = app, ctx
        self.hosts = security.allowed_hosts(ctx.config.host, ctx.config.allow_host)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        started, status = time.perf_counter(), [500]

        async def send_counted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        refusal = self._refusal(scope, path, method, headers)
        if refusal is not None:
            await _json(refusal)(scope, receive, send_counted)
        else:
            cap = _cap_for(path, self.ctx.config)
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                await _json(_too_large(cap))(scope, receive, send_counted)
            else:
                seen = [0]

                async def receive_counted() -> dict[str, Any]:
                    message = await receive()
                    if message["type"] == "http.request":
                        seen[0] += len(message.get("body", b""))
                        if seen[0] > cap:
                            raise _BodyTooLarge()
                    return message

                try:
                    await self.app(scope, receive_counted, send_counted)
                except _BodyTooLarge:
                    await _json(_too_large(cap))(scope, receive, send_counted)
        metrics = self.ctx.extras.get("metrics")
        if metrics is not None and not path.startswith("/static"):
            route = scope.get("route")
            label = getattr(route, "path", "other")
            metrics["requests"].labels(label, str(status[0])).inc()
            metrics["latency"].labels(label).observe(time.perf_counter() - started)

    def _refusal(self, scope: dict[str, Any], path: str, method: str, headers: dict[str, str]) -> ApiError | None:
        why = security.check_host(headers.get("host"), self.hosts)
        if why:
            return ApiError(403, "bad_host", why)
        if not security.is_protected(path):
            return None
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")) if method == "GET" else {}
        bad_token = security.check_token(headers.get("authorization"), self.ctx.config.token,
                                         (query.get("token") or [None])[0])
        if bad_token:
            return ApiError(*bad_token)
        bad_csrf = security.check_csrf(method, path, headers, scope.get("scheme", "http"), self.ctx.csrf)
        if bad_csrf:
            return ApiError(403, *bad_csrf)
        return None


def _too_large(cap: int) -> ApiError:
    return ApiError(413, "too_large", f"the request body is over the limit of {cap / MB:g} MB; send less, or "
                    "raise the cap (pigeon serve --max-request-mb / --max-upload-mb)")


def _json(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _metrics() -> dict[str, Any]:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    registry = CollectorRegistry()
    return {
        "registry": registry,
        "requests": Counter("pigeon_requests", "HTTP requests by route and status", ["route", "status"],
                            registry=registry),
        "latency": Histogram("pigeon_request_seconds", "HTTP request latency by route", ["route"],
                             registry=registry, buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)),
        "batch": Histogram("pigeon_batch_size", "images per forward pass", registry=registry,
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128)),
        "queue": Gauge("pigeon_queue_depth", "images waiting for the model", registry=registry),
    }


# -- decoding ------------------------------------------------------------------------------------------------

def decode(raw: bytes, name: str, spec: Any, max_pixels: int) -> np.ndarray:
    """Image bytes -> the model's uint8 input; the content decides the format, never the file name."""
    from PIL import Image

    from pigeon.data.preprocess import image_to_array, open_image

    if not raw:
        raise ApiError(400, "bad_image", f"{name}: the file is empty (0 bytes)")
    if spec.raster:  # PIL gives L or RGB bytes; such a model needs its bands (pigeon.data.rasters)
        raise ApiError(415, "unsupported_model_input", f"{name}: this model takes {spec.channels}-band "
                       f"{spec.dtype} rasters, which the REST API does not read yet; use `pigeon predict` or "
                       "pigeon.load(...).predict on .npy or TIFF files")
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            w, h = probe.size
    except Exception:  # noqa: BLE001 - PIL raises many kinds for bytes that are not an image
        raise ApiError(400, "bad_image", f"{name}: not an image pigeon can read (PNG, JPEG, BMP, GIF, TIFF, "
                       "WebP)") from None
    if w * h > max_pixels:
        raise ApiError(413, "too_large", f"{name}: {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} "
                       "(pigeon serve --max-pixels); send a smaller image")
    try:
        return image_to_array(open_image(raw), spec.imgsz, spec.channels, spec.resize)
    except Exception as err:  # noqa: BLE001 - truncated or corrupt data
        raise ApiError(400, "bad_image", f"{name}: the image cannot be decoded ({err})") from None


async def _read_images(request: Request, config: ServeConfig) -> list[tuple[str, bytes]]:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        try:
            form = await request.form(max_files=config.max_files, max_fields=config.max_files + 16)
        except StarletteHTTPException as err:
            if "too many files" in str(err.detail).lower():
                raise ApiError(413, "too_large", f"more than {config.max_files} files in one request (pigeon "
                               "serve --max-files); send them in several requests") from None
            raise ApiError(400, "bad_request", f"the multipart body cannot be read: {err.detail}") from None
        files = [f for f in form.getlist("file") if not isinstance(f, str)]
        if not files:
            raise ApiError(422, "bad_parameter", "no 'file' field in the form; send images as file=@img.png")
        out = [(f.filename or "file", await f.read()) for f in files]
        await form.close()
        return out
    if kind.startswith("image/") or kind == "application/octet-stream":
        return [(request.headers.get("x-filename", "body"), await request.body())]
    if kind == "application/json":
        try:
            payload = json.loads(await request.body())
            images = payload["images"]
            assert isinstance(images, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            raise ApiError(422, "bad_parameter", 'send JSON as {"images": ["<base64>", ...]}') from None
        if len(images) > config.max_files:
            raise ApiError(413, "too_large", f"more than {config.max_files} images in one request")
        out = []
        for i, text in enumerate(images):
            text = str(text)
            text = text.split(",", 1)[1] if text.startswith("data:") else text
            try:
                out.append((f"images[{i}]", base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                raise ApiError(400, "bad_image", f"images[{i}] is not valid base64") from None
        return out
    raise ApiError(415, "unsupported_type", f"Content-Type {kind or '(none)'!r} is not accepted; send "
                   "multipart/form-data with file fields, raw image/* bytes, or application/json with base64 images")


# -- the app -------------------------------------------------------------------------------------------------

def create_app(config: ServeConfig) -> FastAPI:
    home = config.home_path
    home.mkdir(parents=True, exist_ok=True)
    ctx = ServeContext(config, home, csrf=secrets.token_urlsafe(32))
    ctx.extras["metrics"] = metrics = _metrics()
    ctx.extras["predicting"] = 0  # predict requests being handled now (the batcher's hint)
    ctx.store = Store(ctx.db_path)

    def make_batcher(run: Any) -> Batcher:
        return Batcher(run, config.max_batch, config.max_wait_ms, config.queue_limit,
                       on_batch=metrics["batch"].observe, on_depth=metrics["queue"].set,
                       in_flight=lambda: ctx.extras["predicting"])

    ctx.models = ModelRegistry(make_batcher)

    def on_done(job: dict[str, Any]) -> None:
        best = Path(job["run_dir"]) / "weights" / "best.safetensors"
        if best.is_file():
            ctx.models.register_path(best)

    ctx.jobs = jobs.JobRunner(ctx.store, ctx.runs_dir, config.jobs, on_done=on_done)
    if config.model:
        ctx.models.register_path(config.model, default=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        ctx.runs_dir.mkdir(parents=True, exist_ok=True)
        ctx.jobs.start()
        for best in sorted(ctx.runs_dir.glob("*/weights/best.safetensors")):
            ctx.models.register_path(best)
        if config.model:  # load and warm the default model now, so /readyz turns 200 as soon as it can
            asyncio.get_running_loop().run_in_executor(None, _warm, ctx)
        yield
        await run_in_threadpool(ctx.jobs.stop)
        ctx.models.close()

    app = FastAPI(title="pigeon", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="pigeon's REST API: predict with a served model; datasets, training jobs, runs and "
                              "exports for the app. Errors are {\"error\": {\"code\", \"message\"}}.")
    app.state.ctx = ctx

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return _json(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _json(ApiError(422, "bad_parameter", f"{where}: {first.get('msg', 'invalid')}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _json(ApiError(err.status_code, codes.get(err.status_code, "error"), str(err.detail)))

    @app.exception_handler(PigeonError)
    async def _pigeon(request: Request, err: PigeonError) -> JSONResponse:
        return _json(ApiError(422 if isinstance(err, ConfigError) else 400, "bad_parameter" if
                              isinstance(err, ConfigError) else "bad_input", str(err)))

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """200 only when the served model is loaded and warm; 503 with the reason otherwise."""
        default = ctx.models.default_id
        if default is None:
            return _json(ApiError(503, "not_ready", "no model is served: start pigeon serve with --model PATH"))
        model = ctx.models._models[default]
        if model.clf is None:
            why = model.error or "the model is still loading"
            return _json(ApiError(503, "not_ready", why, headers={"Retry-After": "1"}))
        return JSONResponse({"ready": True, "model": default})

    @app.get("/metrics", tags=["health"])
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics["registry"]), media_type=CONTENT_TYPE_LATEST)

    page = (STATIC / "index.html").read_text() if (STATIC / "index.html").is_file() else "<p>pigeon</p>"

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page.replace("__PIGEON_CSRF__", ctx.csrf), headers={"Cache-Control": "no-store"})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_PAGE)

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(HTTPBearer(auto_error=False,
                                                                       description="needed off loopback"))])
    _core_routes(api, ctx)
    _workshop_routes(api, ctx)
    app.include_router(api)
    app.add_middleware(Guard, ctx=ctx)
    return app


def _warm(ctx: ServeContext) -> None:
    try:
        ctx.models.get(None)
    except ApiError:
        pass  # the reason is kept on the model and shown by /readyz


def _core_routes(api: APIRouter, ctx: ServeContext) -> None:
    config = ctx.config

    @api.get("/session", tags=["app"])
    async def session() -> dict[str, Any]:
        """The page's CSRF token (readable only by pages served from here) and what the server offers."""
        return {"csrf": ctx.csrf, "version": __version__, "token_required": bool(config.token),
                "default_model": ctx.models.default_id, "max_batch": config.max_batch}

    @api.get("/models", tags=["predict"])
    async def list_models() -> list[dict[str, Any]]:
        """The models this server can answer with; `default` marks the one /predict uses."""
        return ctx.models.list()

    async def predict(request: Request, model_id: str | None, top_k: int, min_conf: float | None) -> dict[str, Any]:
        ctx.extras["predicting"] += 1  # on the event loop only, so no lock is needed
        try:
            return await _predict(request, model_id, top_k, config.min_conf if min_conf is None else min_conf)
        finally:
            ctx.extras["predicting"] -= 1

    async def _predict(request: Request, model_id: str | None, top_k: int,
                       min_conf: float | None) -> dict[str, Any]:
        if top_k < 1:
            raise ApiError(422, "bad_parameter", f"top_k={top_k} must be at least 1")
        if min_conf is not None and not 0.0 <= min_conf <= 1.0:
            raise ApiError(422, "bad_parameter", f"min_conf={min_conf} must be a probability between 0 and 1")
        t0 = time.perf_counter()
        model = ctx.models.loaded(model_id) or await run_in_threadpool(ctx.models.get, model_id)
        thresholds = model.clf.thresholds  # a multi-label model: each class at its own threshold
        if thresholds is not None:
            min_conf = None  # not the server's default either: no single confidence decides a label set
        raw = await _read_images(request, config)
        spec = model.clf.preprocess
        decode_ms, arrays = [], []
        for name, data in raw:
            t = time.perf_counter()
            # A small file decodes in well under a millisecond, less than a hop to a worker thread costs;
            # larger ones go to a thread so the event loop keeps serving.
            arrays.append(decode(data, name, spec, config.max_pixels) if len(data) < INLINE_DECODE_BYTES else
                          await run_in_threadpool(decode, data, name, spec, config.max_pixels))
            decode_ms.append((time.perf_counter() - t) * 1000)
        t_inf = time.perf_counter()
        probs = await model.batcher.submit(np.stack(arrays))
        inference_ms = (time.perf_counter() - t_inf) * 1000
        classes = model.clf.classes
        k = min(top_k, len(classes))
        out = []
        for (name, _), p, d_ms in zip(raw, probs, decode_ms):
            order = np.argsort(-p)[:k]
            confidence = float(p[order[0]])
            abstained = min_conf is not None and confidence < min_conf
            item = {"file": name, "label": UNKNOWN if abstained else classes[order[0]],
                    "confidence": confidence, "abstained": abstained,
                    "top": [{"label": classes[i], "class_index": int(i), "score": float(p[i])} for i in order],
                    "ms": {"decode": round(d_ms, 3), "inference": round(inference_ms, 3),
                           "total": round(d_ms + inference_ms, 3)}}
            if thresholds is not None:
                present = present_classes(p, thresholds)
                item.update(label=";".join(classes[i] for i in present), labels=[
                    {"label": classes[i], "class_index": i, "score": float(p[i]), "threshold": float(thresholds[i])}
                    for i in present])
            out.append(item)
        return {"model": {"id": model.id, "name": model.name, "sha256": model.sha256,
                          "temperature": model.clf.temperature, "task": model.clf.task},
                "min_conf": min_conf, "predictions": out,
                "ms": {"total": round((time.perf_counter() - t0) * 1000, 3)}}

    predict_doc = ("Top-k classes of one or more images, with calibrated scores. Body: multipart `file` fields "
                   "(repeatable), raw image bytes (Content-Type image/*), or JSON {\"images\": [base64, ...]}. "
                   "`min_conf` (default: the server's --min-conf): below it an image's label is \"unknown\" and "
                   "`abstained` is true; `top` still lists the model's guesses. A multi-label model answers "
                   "`labels`, every class at or above its own threshold (`label` joins them with ;), and ignores "
                   "`min_conf`.")

    @api.post("/predict", tags=["predict"], description=predict_doc)
    async def predict_default(request: Request, top_k: int = 5, min_conf: float | None = None) -> dict[str, Any]:
        return await predict(request, None, top_k, min_conf)

    @api.post("/models/{model_id}/predict", tags=["predict"], description=predict_doc)
    async def predict_with(model_id: str, request: Request, top_k: int = 5,
                           min_conf: float | None = None) -> dict[str, Any]:
        return await predict(request, model_id, top_k, min_conf)


def _dataset(ctx: ServeContext, dataset_id: str) -> dict[str, Any]:
    record = ctx.store.dataset(dataset_id)
    if record is None:
        raise ApiError(404, "not_found", f"no dataset {dataset_id!r}; GET /api/v1/datasets lists them")
    return record


def _options(raw: dict[str, Any]) -> dict[str, Any]:
    """Training options from the page: pigeon's own names, validated by TrainConfig itself."""
    opts = {k: v for k, v in raw.items() if k != "dataset" and v is not None and v != ""}
    bad = [k for k in opts if k in SET_BY_APP]
    if bad:
        raise ApiError(422, "bad_parameter", f"{', '.join(bad)} are set by the app, not by the request")
    try:
        build(TrainConfig, data="digits", **opts)
    except ConfigError as err:
        raise ApiError(422, "bad_parameter", str(err)) from None
    return opts


def _workshop_routes(api: APIRouter, ctx: ServeContext) -> None:
    config = ctx.config

    @api.get("/train-options", tags=["train"])
    async def train_options() -> dict[str, Any]:
        """Model names this server can train, the built-in datasets, and pigeon's defaults."""
        from pigeon.engine.recipe import AUTO_MODEL, recipe_for
        from pigeon.models import list_models, zoo

        names = [AUTO_MODEL, *list_models()]
        extra = {"timm": ["timm:resnet18", "timm:mobilenetv3_small_100", "timm:efficientnet_b0"],
                 "tv": ["tv:resnet18", "tv:mobilenet_v3_small"]}
        for prefix, more in extra.items():
            if zoo.available(prefix):
                names += more
        fields = TrainConfig.__dataclass_fields__
        keys = ("model", "epochs", "imgsz", "batch", "lr", "weight_decay", "fliplr", "translate", "erase",
                "mixup", "cutmix", "label_smoothing", "val_fraction", "weights", "time", "seed", "balance")
        recipe = recipe_for()
        return {"models": names, "builtins": datasets.builtins_here(),
                "defaults": {k: fields[k].default for k in keys},
                "recipe": {"kind": recipe.kind, "model": recipe.model, "epochs": recipe.epochs,
                           "batch": recipe.batch, "why": recipe.why}}

    @api.post("/datasets", tags=["data"], status_code=201)
    async def add_dataset(request: Request) -> dict[str, Any]:
        """A zip upload (multipart `file`, or the raw zip body), or JSON {"builtin": name} / {"path": folder}."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            body = await _json_body(request)
            if "builtin" in body:
                record = await run_in_threadpool(datasets.create, ctx.home, "builtin", str(body["builtin"]),
                                                 str(body["builtin"]))
            elif "path" in body:
                record = await run_in_threadpool(datasets.create, ctx.home, "path", Path(str(body["path"])).name,
                                                 str(body["path"]))
            else:
                raise ApiError(422, "bad_parameter", 'send {"builtin": "digits"} or {"path": "/folder"}')
        else:
            record = await _upload(request, ctx, kind)
        ctx.store.put_dataset(record)
        return record

    @api.get("/datasets", tags=["data"])
    async def list_datasets() -> list[dict[str, Any]]:
        return ctx.store.datasets()

    @api.get("/datasets/{dataset_id}", tags=["data"])
    async def get_dataset(dataset_id: str) -> dict[str, Any]:
        return _dataset(ctx, dataset_id)

    @api.delete("/datasets/{dataset_id}", tags=["data"])
    async def delete_dataset(dataset_id: str) -> dict[str, Any]:
        record = _dataset(ctx, dataset_id)
        ctx.store.delete_dataset(dataset_id)
        await run_in_threadpool(datasets.remove, ctx.home, record)
        return {"deleted": dataset_id}

    @api.get("/datasets/{dataset_id}/thumbs/{class_index}/{i}", tags=["data"])
    async def thumb(dataset_id: str, class_index: int, i: int) -> FileResponse:
        _dataset(ctx, dataset_id)
        path = ctx.home / "thumbs" / dataset_id / str(class_index) / f"{i}.png"
        if not path.is_file():
            raise ApiError(404, "not_found", f"dataset {dataset_id} has no thumbnail {class_index}/{i}")
        return FileResponse(path, media_type="image/png")

    @api.post("/plan", tags=["train"])
    async def plan_job(request: Request) -> dict[str, Any]:
        """The planned training time of these options, from a pace measured on this machine."""
        body = await _json_body(request)
        record = _dataset(ctx, str(body.get("dataset", "")))
        opts = _options(body)
        return await run_in_threadpool(plan.plan, record, opts)

    @api.post("/jobs", tags=["train"], status_code=201)
    async def start_job(request: Request) -> dict[str, Any]:
        """Queue a training job: {"dataset": id, ...pigeon train options}. It runs in a child process."""
        body = await _json_body(request)
        record = _dataset(ctx, str(body.get("dataset", "")))
        if not record["trainable"]:
            raise ApiError(409, "conflict", f"dataset {record['name']} would not train: {record['why_not']}")
        opts = _options(body)
        return ctx.jobs.submit({**opts, "data": record["path"]}, record["id"])

    @api.get("/jobs", tags=["train"])
    async def list_jobs() -> list[dict[str, Any]]:
        return ctx.store.jobs()

    @api.get("/jobs/{job_id}", tags=["train"])
    async def get_job(job_id: int) -> dict[str, Any]:
        return ctx.jobs._job(job_id)

    @api.post("/jobs/{job_id}/cancel", tags=["train"])
    async def cancel_job(job_id: int) -> dict[str, Any]:
        return ctx.jobs.cancel(job_id)

    @api.post("/jobs/{job_id}/resume", tags=["train"])
    async def resume_job(job_id: int) -> dict[str, Any]:
        return ctx.jobs.resume(job_id)

    @api.get("/jobs/{job_id}/events", tags=["train"])
    async def job_events(job_id: int, request: Request) -> StreamingResponse:
        """Server-sent events: the engine's start/progress/epoch/done events (with ids; Last-Event-ID
        continues), `state` when the job's state changes and `log` for new log lines. Ends after the job."""
        job = ctx.jobs._job(job_id)
        after = request.headers.get("last-event-id", "")
        start = int(after) if after.isdigit() else 0
        return StreamingResponse(_stream(ctx, job, start, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @api.get("/runs", tags=["runs"])
    async def list_runs() -> list[dict[str, Any]]:
        """Every run folder under the home's runs/train, made here or by the CLI."""
        return await run_in_threadpool(runs.list_runs, ctx.runs_dir)

    @api.get("/runs/{name}", tags=["runs"])
    async def run_detail(name: str) -> dict[str, Any]:
        return await run_in_threadpool(runs.detail, ctx.runs_dir, name)

    @api.get("/runs/{name}/misclassified", tags=["runs"])
    async def run_mistakes(name: str, limit: int = 48) -> list[dict[str, Any]]:
        """Validation images the best model gets wrong, least confident first."""
        return await run_in_threadpool(runs.misclassified, ctx.runs_dir, name, limit)

    @api.get("/runs/{name}/cell", tags=["runs"])
    async def run_cell(name: str, true: int, pred: int, limit: int = 48) -> list[dict[str, Any]]:
        """The validation images of one confusion-matrix cell."""
        return await run_in_threadpool(runs.cell, ctx.runs_dir, name, true, pred, limit)

    @api.get("/runs/{name}/images/{index}", tags=["runs"])
    async def run_image(name: str, index: int) -> Response:
        return Response(await run_in_threadpool(runs.image_png, ctx.runs_dir, name, index), media_type="image/png")

    @api.get("/runs/{name}/files/{rel:path}", tags=["runs"])
    async def run_file(name: str, rel: str) -> FileResponse:
        """Download a file of the run (weights, exports); nothing outside its folder."""
        path = runs.file_path(ctx.runs_dir, name, rel)
        return FileResponse(path, filename=f"{name}-{path.name}")

    @api.post("/runs/{name}/exports", tags=["runs"], status_code=201)
    async def run_export(name: str, request: Request) -> dict[str, Any]:
        """Export the run's best weights: {"format": "onnx"|"torchscript"|"openvino", "int8": false}."""
        body = await _json_body(request)
        fmt, int8 = str(body.get("format", "onnx")), bool(body.get("int8", False))
        return await run_in_threadpool(runs.export, ctx.runs_dir, name, fmt, int8)

    @api.get("/compare", tags=["runs"])
    async def compare(names: str) -> list[dict[str, Any]]:
        """Two or more runs side by side: ?names=a,b."""
        wanted = [n for n in names.split(",") if n]
        if len(wanted) < 2:
            raise ApiError(422, "bad_parameter", "give at least two run names: ?names=a,b")
        return await run_in_threadpool(runs.compare, ctx.runs_dir, wanted)

    del config


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ApiError(422, "bad_parameter", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(422, "bad_parameter", "the body must be a JSON object")
    return body


async def _upload(request: Request, ctx: ServeContext, kind: str) -> dict[str, Any]:
    """Stream the zip to a file under the home (counted by Guard), then unpack it into a fresh folder."""
    config = ctx.config
    uploads = ctx.home / "uploads"
    uploads.mkdir(exist_ok=True)
    dataset_id = datasets.new_id()
    archive = uploads / f"{dataset_id}.zip"
    name = request.headers.get("x-filename", "upload.zip")
    try:
        if kind == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=8)
            except StarletteHTTPException as err:
                raise ApiError(400, "bad_request", f"the upload cannot be read: {err.detail}") from None
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(422, "bad_parameter", "no 'file' field: send the zip as file=@data.zip")
            name = upload.filename or name
            with open(archive, "wb") as out:
                await run_in_threadpool(shutil.copyfileobj, upload.file, out)
            await form.close()
        elif kind in ("application/zip", "application/x-zip-compressed", "application/octet-stream"):
            with open(archive, "wb") as out:
                async for chunk in request.stream():
                    out.write(chunk)
        else:
            raise ApiError(415, "unsupported_type", f"Content-Type {kind or '(none)'!r}: upload a zip as "
                           "multipart/form-data (file=@data.zip) or application/zip, or send JSON")
        caps = archives.Caps(int(config.max_unzipped_mb * MB), config.max_entries, config.max_ratio)
        work = ctx.datasets_dir / dataset_id
        root = await run_in_threadpool(archives.extract, archive, work, caps)
        stem = Path(name).stem or "upload"
        record = await run_in_threadpool(datasets.create, ctx.home, "upload", stem, root, work)
        record["id"] = dataset_id
        return record
    finally:
        archive.unlink(missing_ok=True)


async def _stream(ctx: ServeContext, job: dict[str, Any], start: int, request: Request) -> Any:
    run_dir = Path(job["run_dir"])
    log_path = run_dir / "serve.log"
    last_id, state, log_at = start, None, 0
    if start == 0 and log_path.is_file():
        log_at = max(0, log_path.stat().st_size - 4000)  # a fresh page gets the recent tail, not the whole log
    while True:
        current = ctx.store.job(job["id"]) or job
        for event_id, event in jobs.read_events(run_dir, last_id):
            last_id = event_id
            yield f"id: {event_id}\nevent: {event.get('event', 'message')}\ndata: {json.dumps(event)}\n\n"
        if log_path.is_file() and log_path.stat().st_size > log_at:
            with open(log_path, "rb") as f:
                f.seek(log_at)
                chunk = f.read(64_000)
            log_at += len(chunk)
            # tqdm redraws its bar with carriage returns: keep each line's last state
            lines = [ln.rsplit("\r", 1)[-1] for ln in chunk.decode(errors="replace").splitlines() if ln.strip()]
            if lines:
                yield f"event: log\ndata: {json.dumps({'lines': lines[-50:]})}\n\n"
        if current["state"] != state:
            state = current["state"]
            yield f"event: state\ndata: {json.dumps(current)}\n\n"
        if jobs.is_final(state) and not jobs.read_events(run_dir, last_id):
            return
        if ctx.jobs.stopping.is_set():
            return
        await asyncio.sleep(0.25)


DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pigeon API</title>
<link rel="stylesheet" href="/static/vendor/swagger-ui/swagger-ui.css"></head>
<body><div id="swagger"></div>
<script src="/static/vendor/swagger-ui/swagger-ui-bundle.js"></script>
<script src="/static/docs.js"></script>
</body></html>"""

"""The FastAPI app over one Context or several models by name: OpenAI Images, AUTOMATIC1111's API and a job
API of our own.

Every request is checked in full (``Context.generate``'s own checks, then the server's limits) before it is
queued, so a bad request gets a 4xx JSON answer naming its field at once and never reaches the worker.
"""

from __future__ import annotations

import asyncio
import base64
import difflib
import functools
import hmac
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from .. import Lora, __version__
from .._enums import Sampler, Scheduler
from .._options import _lora_in_dir
from .._params import IMAGE
from .._request import image_request
from . import _fields as F
from ._fields import FieldError
from ._models import Model, Models
from ._worker import FINISHED, SUPERSEDED, Job, QueueFull, Stopping, Worker, parameters_text

log = logging.getLogger("sdcpp_py.server")
LORA_EXTENSIONS = (".gguf", ".safetensors", ".pt")
_KINDS = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 409: "cancelled", 413: "request_too_large", 422: "invalid_request_error",
          429: "rate_limit_error"}
REF_PIXELS = 4  # a request's ref_images together: at most this many times max_pixels (the core shrinks each
#                 to at most the output's size, 1 megapixel at most, unless auto_resize_ref_images is off)


@dataclass
class Settings:
    """Server limits. ``model_name``: the name of a single Context (models of a config have their own);
    ``max_pixels``: width*height of an output (and of an input image); ``max_n``: images per request;
    ``queue_size``: jobs waiting behind the running ones; ``max_body``: bytes of a request; ``max_ref_images``:
    reference images of a request (of ``REF_PIXELS`` * ``max_pixels`` pixels together); ``workers``: worker
    processes (each loads its own contexts; 0 runs jobs on a thread of this process); ``devices``: the GPU
    each worker process sees (``CUDA_VISIBLE_DEVICES`` and ``GGML_VK_VISIBLE_DEVICES``)."""

    model_name: str = "sdcpp"
    queue_size: int = 8
    api_key: Optional[str] = None
    max_pixels: int = 2048 * 2048
    max_n: int = 4
    max_body: int = 64 * 2**20
    max_ref_images: int = 10  # Flux Kontext and Qwen-Image-Edit take one to three, FLUX.2 up to 10
    workers: int = 0  # 0: generate on a thread of this process; N: in N worker processes of their own
    devices: Optional[Sequence[str]] = None  # with workers: worker i sees device devices[i % len(devices)]


def _error(status: int, field: Optional[str], message: str, headers: Optional[dict] = None) -> JSONResponse:
    # OpenAI's error shape; "detail" as FastAPI (and A1111) clients read it.
    body = {"error": {"message": message, "type": _KINDS.get(status, "server_error"), "param": field,
                      "code": None}, "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


_OPEN_PATHS = ("/health", "/")  # the static page holds no data; it asks for the key and sends it itself


class _Guard:
    """Bearer API key on everything but /health and the page, and the body size limit by Content-Length (bodies without
    one are counted as they are read)."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        key = self.settings.api_key
        if key is not None and scope.get("path") not in _OPEN_PATHS:
            # Bytes as they came: the key is printable ASCII (checked at start-up), as a header can carry it.
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), key.encode("ascii")):
                response = _error(401, None, "a valid API key is required (Authorization: Bearer KEY)",
                                  {"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.settings.max_body
            except ValueError:
                return await _error(400, None, "Content-Length is not a number")(scope, receive, send)
            if too_large:
                return await _error(413, None, f"the body is over this server's limit of "
                                               f"{self.settings.max_body} bytes")(scope, receive, send)
        await self.app(scope, receive, send)


class Server:
    """The routes' state: the models, their worker and the settings."""

    def __init__(self, models: Models, settings: Settings):
        check_settings(settings)
        self.models, self.settings = models, settings
        self.worker = Worker(models, settings.queue_size, runners=_runners(models, settings))
        self._offloading: Optional[asyncio.Lock] = None  # made on the loop (Python 3.9 binds a lock at creation)

    def model(self, field: str, value: Any) -> Model:
        """The model a request names in ``field`` (None: the default one); 404 for one not served here."""
        if value is None:
            return self.models.default
        if not isinstance(value, str):
            raise FieldError(400, field, f"{field} must be a model name, not {type(value).__name__}")
        model = self.models.find(value)
        if model is None:
            names = ", ".join(repr(model.name) for model in self.models)
            raise FieldError(404, field, f"{field}: model {value!r} is not served here; this server has {names}")
        return model

    # -- bodies ----------------------------------------------------------------------------------------
    async def body(self, request: Request) -> bytes:
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > self.settings.max_body:
                raise FieldError(413, None, f"the body is over this server's limit of {self.settings.max_body} bytes")
            chunks.append(chunk)
        request._body = data = b"".join(chunks)  # starlette reads a cached body back for form()
        return data

    async def json_body(self, request: Request) -> Dict[str, Any]:
        return await self.offload(F.json_object, await self.body(request))

    async def offload(self, function, *args):
        """``function(*args)`` (parsing a body, decoding images) on a thread, so that a large body does not stall
        the loop; one request's at a time, so that memory holds one request's decoded images at a time."""
        if self._offloading is None:
            self._offloading = asyncio.Lock()
        async with self._offloading:
            return await asyncio.to_thread(function, *args)

    # -- checking and queueing -------------------------------------------------------------------------
    def check(self, model: Model, prompt: Any, options: Dict[str, Any], fields: Dict[str, str],
              preview: bool = False) -> None:
        """``Context.generate``'s checks against ``model``'s facts (no context needed: the model may not be
        loaded yet), then the server's limits."""
        try:
            # A job with previews runs with a preview callable, which some options refuse (preview_mode "none").
            values = IMAGE.bind(dict(options, preview=_no_preview) if preview else options, "generate")
            native, _ = image_request(prompt, values, model.facts, model.lora_dir)
        except (TypeError, ValueError, OSError) as error:
            raise F.from_api_error(error, fields) from None
        width, height = native.width, native.height
        field = fields.get("width", "width")
        if width * height > self.settings.max_pixels:
            raise FieldError(400, field, f"{field}: {width}x{height} is {width * height} pixels, over this "
                                         f"server's limit of {self.settings.max_pixels}")
        if model.multiple and (width % model.multiple or height % model.multiple):
            raise FieldError(400, field, f"{field}: {width}x{height}: width and height must be multiples of "
                                         f"{model.multiple} for this model ({model.architecture})")
        if native.batch_count > self.settings.max_n:
            field = fields.get("batch_count", "batch_count")
            raise FieldError(400, field, f"{field}={native.batch_count} is over this server's limit of "
                                         f"{self.settings.max_n} images per request")

    def submit(self, model: Model, prompt: str, options: Dict[str, Any], fields: Dict[str, str], *, keep: bool,
               preview: bool = False) -> Job:
        self.check(model, prompt, options, fields, preview)
        job = Job(prompt, options, asyncio.get_running_loop(), model=model, preview=preview, keep=keep)
        try:
            self.worker.submit(job)
        except QueueFull as full:
            raise FieldError(429, None, "the queue is full; try again later",
                             {"Retry-After": str(full.retry_after)}) from None
        except Stopping:
            raise FieldError(503, None, "the server is stopping") from None
        return job

    def describe(self, job: Job, seed: int, size: Tuple[int, int]) -> str:
        return parameters_text(job.prompt, job.options, job.model.components, seed, size)

    async def wait(self, request: Request, job: Job) -> Job:
        """Wait for ``job``; a client that goes away cancels it."""
        try:
            while not job.finished.done():
                await asyncio.wait({job.finished}, timeout=0.2)
                if not job.finished.done() and await request.is_disconnected():
                    log.info("client left: cancelling job %s", job.id)
                    self.worker.cancel(job)
                    await job.finished
        except asyncio.CancelledError:  # the request's task was cancelled (Ray Serve does when a client leaves)
            log.info("request cancelled: cancelling job %s", job.id)
            self.worker.cancel(job)
            raise
        if job.state == "cancelled":
            raise FieldError(409, None, "the job was cancelled")
        if job.state == "failed":
            raise FieldError(400 if job.error_kind == "invalid" else 500, None, job.error or "failed")
        return job

    # -- field helpers -----------------------------------------------------------------------------------
    def loras(self, model: Model, field: str, value: Any) -> List[Lora]:
        """LoRAs by name, from the model's lora_dir only."""
        if model.lora_dir is None:
            raise FieldError(400, field, f"{field}: this server has no LoRA folder (--lora-model-dir)")
        if not isinstance(value, list):
            raise FieldError(400, field, f"{field} must be a list of {{\"name\", \"multiplier\"}} objects")
        base = os.path.normpath(os.path.abspath(model.lora_dir))
        loras = []
        for index, item in enumerate(value):
            name, multiplier = (item, 1.0) if isinstance(item, str) else (
                (item.get("name"), item.get("multiplier", 1.0)) if isinstance(item, dict) else (None, None))
            if not isinstance(name, str) or isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)):
                raise FieldError(400, field, f"{field}[{index}] must be a name or {{\"name\": str, "
                                             "\"multiplier\": number}")
            try:
                path = _lora_in_dir(f"{field}[{index}]", name, base)
            except (ValueError, OSError):
                raise FieldError(400, field, f"{field}[{index}]: no LoRA named {name!r} in the LoRA folder") \
                    from None
            loras.append(Lora(path, multiplier))
        return loras

    async def image(self, field: str, value: Any, mode: str = "RGB"):
        # Inputs larger than the output could be are refused before decoding.
        return await self.offload(F.base64_image, field, value, mode, self.settings.max_pixels)

    async def ref_images(self, field: str, value: Any):
        limits = self.settings.max_ref_images, self.settings.max_pixels, REF_PIXELS * self.settings.max_pixels
        return await self.offload(F.base64_images, field, value, *limits)

    def table_fields(self, body: Dict[str, Any], names, options: Dict[str, Any], fields: Dict[str, str]) -> None:
        """Fields named as ``generate``'s keywords; samplers and schedulers also by A1111's names."""
        for name in names:
            value = body.get(name)
            if value is None:
                continue
            if name == "sampler":
                value = F.sampler(name, value)
            elif name == "scheduler":
                value = F.scheduler(name, value)
            options[name], fields[name] = value, name


def _no_preview(step: int, frames, is_noisy: bool) -> None:
    """The preview callable a request with previews is checked with (the job gets the worker's own)."""


def check_settings(settings: Settings) -> None:
    """ValueError for a setting the server could not honour (the worker settings: ``_runners``)."""
    key = settings.api_key
    # A header carries ASCII (browsers send other text as latin-1 bytes, other clients refuse it), and the
    # token is read without the spaces around it: any other key could never match.
    if key is not None and not (key and key.isascii() and key.isprintable() and key == key.strip()):
        raise ValueError("the API key must be printable ASCII without spaces around it, and not empty")
    if isinstance(settings.max_ref_images, bool) or not isinstance(settings.max_ref_images, int) \
            or settings.max_ref_images < 0:
        raise ValueError(f"max_ref_images must be an int of at least 0, not {settings.max_ref_images!r}")


def _runners(models: Models, settings: Settings) -> Optional[list]:
    """Worker processes for ``settings.workers`` (None: one thread of this process)."""
    if settings.devices is not None and not settings.workers:
        raise ValueError("devices are given to worker processes: set workers (--workers) too")
    if not settings.workers:
        return None
    if settings.workers < 1:
        raise ValueError(f"workers must be at least 1, not {settings.workers}")
    if os.name != "posix":  # the worker's socket is passed as an inherited descriptor
        raise ValueError("worker processes (--workers) need Linux or macOS")
    from ._process import DEVICE_VARIABLES, ProcessRunner, model_specs

    spec = {"models": model_specs(models), "max_loaded": models.max_loaded}
    if isinstance(settings.devices, (str, bytes)):
        raise ValueError(f"devices must be a list of device numbers, not the text {settings.devices!r}")
    devices = [str(device) for device in settings.devices or []]
    if settings.devices is not None and (not devices or not all(device.strip() for device in devices)):
        raise ValueError(f"devices: give one device per worker, not {settings.devices!r}")
    runners = []
    for index in range(settings.workers):
        environment = {name: devices[index % len(devices)] for name in DEVICE_VARIABLES} if devices else {}
        runners.append(ProcessRunner(models, spec, environment))
    return runners


def _images_b64(job: Job) -> List[str]:
    return [base64.b64encode(data).decode("ascii") for data in job.images]


def _job_status(server: Server, job: Job) -> Dict[str, Any]:
    status: Dict[str, Any] = {"id": job.id, "model": job.model.name, "state": job.state, "created": job.created}
    if job.state == "queued":
        status["position"] = server.worker.position(job)
    elif job.state == "running":
        status.update(step=job.step, steps=job.steps, worker=job.worker)
    elif job.state == "failed":
        status["error"] = job.error
    elif job.state == "done":
        status.update(seed=job.seed, images=_images_b64(job))
    return status


_OPENAI_EXTRA = tuple(name for name in F.JSON_ROWS if name not in ("width", "height", "batch_count"))
_A1111_FIELDS = {"negative_prompt": "negative_prompt", "steps": "steps", "cfg_scale": "cfg_scale",
                 "width": "width", "height": "height", "seed": "seed", "eta": "eta", "clip_skip": "clip_skip",
                 "distilled_cfg_scale": "guidance", "guidance": "guidance"}


def create_app(context, settings: Optional[Settings] = None) -> FastAPI:
    """The server's ASGI app over ``context``: a Context (which the caller keeps and closes), served as
    ``settings.model_name``, or a ``Models`` of a config (whose contexts the app loads and closes). The
    worker thread starts with the app's lifespan and stops, cancelling what is left, when it ends."""
    from contextlib import asynccontextmanager

    settings = settings or Settings()
    models = context if isinstance(context, Models) else Models.single(context, settings.model_name)
    server = Server(models, settings)

    def stop():
        server.worker.stop()
        models.close()

    @asynccontextmanager
    async def lifespan(app):
        server.worker.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, stop)

    app = FastAPI(title="sdcpp-py", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(_Guard, settings=settings)

    @app.exception_handler(FieldError)
    async def field_error(request: Request, error: FieldError):
        return _error(error.status, error.field, error.message, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        # FastAPI's checks of query and path parameters, in the shape of every other refusal.
        problem = (error.errors() or [{}])[0]
        location = [str(part) for part in problem.get("loc", ()) if part not in ("query", "path", "body", "header")]
        field = ".".join(location) or None
        message = problem.get("msg", "invalid request")
        return _error(422, field, f"{field}: {message}" if field else message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        # Starlette's own answers (no such route, method not allowed), in the shape of every other refusal.
        return _error(error.status_code, None, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("request %s", request.url.path)
        return _error(500, None, "internal server error")

    # -- common --------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def page():
        # One static page of ours (no build step, no CDN): it drives the job API and its event stream.
        return HTMLResponse(_page())

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": models.default.name, "queued": server.worker.queued(),
                "running": server.worker.running is not None,
                "workers": [runner.info() for runner in server.worker.runners],
                "loaded": [model.name for model in models if model.loaded]}

    @app.get("/v1/models")
    async def list_models():
        # OpenAI's model objects, with whether each is loaded now and which answers requests naming none.
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": 0,
                                            "owned_by": "sdcpp-py", "loaded": model.loaded,
                                            "default": model is models.default} for model in models]}

    # -- OpenAI Images -------------------------------------------------------------------------------
    def openai_options(body: Dict[str, Any]) -> Tuple[Model, Any, Dict[str, Any], Dict[str, str]]:
        model = server.model("model", body.get("model"))
        response_format = body.get("response_format")
        if response_format not in (None, "b64_json"):
            raise FieldError(400, "response_format", "response_format: only 'b64_json' (this server keeps no "
                                                     "files to give URLs of)")
        if body.get("output_format") not in (None, "png"):
            raise FieldError(400, "output_format", "output_format: only 'png'")
        if body.get("prompt") is None:
            raise FieldError(400, "prompt", "prompt is required")
        options: Dict[str, Any] = {}
        fields: Dict[str, str] = {"prompt": "prompt"}
        if body.get("n") is not None:
            options["batch_count"], fields["batch_count"] = body["n"], "n"
        wanted = F.size("size", body.get("size"))
        if wanted is not None:
            options["width"], options["height"] = wanted
            fields["width"] = fields["height"] = "size"
        server.table_fields(body, _OPENAI_EXTRA, options, fields)
        if body.get("loras") is not None:
            options["loras"], fields["loras"] = server.loras(model, "loras", body["loras"]), "loras"
        return model, body["prompt"], options, fields

    def openai_response(job: Job) -> Dict[str, Any]:
        return {"created": int(job.created), "data": [{"b64_json": data} for data in _images_b64(job)]}

    @app.post("/v1/images/generations")
    async def images_generations(request: Request):
        model, prompt, options, fields = openai_options(await server.json_body(request))
        job = server.submit(model, prompt, options, fields, keep=False)
        return openai_response(await server.wait(request, job))

    @app.post("/v1/images/edits")
    async def images_edits(request: Request):
        await server.body(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise FieldError(400, None, "images/edits takes multipart/form-data")
        try:
            form = await request.form(max_files=8, max_fields=200, max_part_size=settings.max_body)
        except Exception:  # the multipart parser's errors: the body is malformed
            raise FieldError(400, None, "the multipart body is malformed") from None
        body: Dict[str, Any] = {}
        files: Dict[str, List[bytes]] = {}
        try:
            for key, value in form.multi_items():
                name = key[:-2] if key.endswith("[]") else key
                if hasattr(value, "read"):
                    files.setdefault(name, []).append(await value.read())
                elif name in ("image", "mask"):
                    raise FieldError(400, name, f"{name} must be a file (multipart with a filename), not a text "
                                                "field")
                else:
                    body[name] = _form_value(name, value)
        finally:
            await form.close()  # the uploads' temporary files
        images = files.get("image", [])
        if len(images) != 1:
            raise FieldError(400, "image", "image: give one image file")
        model, prompt, options, fields = openai_options(body)
        if len(files.get("mask", [])) > 1:
            raise FieldError(400, "mask", "mask: give one mask file")
        picture = await server.offload(F.image, "image", images[0], "RGB", settings.max_pixels)
        options["init_image"], fields["init_image"] = picture, "image"
        if files.get("mask"):
            mask = await server.offload(F.image, "mask", files["mask"][0], "openai_mask", settings.max_pixels)
            options["mask"], fields["mask"] = mask, "mask"
        job = server.submit(model, prompt, options, fields, keep=False)
        return openai_response(await server.wait(request, job))

    # -- AUTOMATIC1111 ---------------------------------------------------------------------------------
    def a1111_options(body: Dict[str, Any]) -> Tuple[Model, Any, Dict[str, Any], Dict[str, str]]:
        overrides = body.get("override_settings")
        if overrides is None:
            overrides = {}
        elif not isinstance(overrides, dict):
            raise FieldError(400, "override_settings", "override_settings must be an object of settings")
        # The checkpoint as A1111 clients choose it: per request in override_settings, or at the top level.
        if overrides.get("sd_model_checkpoint") is not None:
            model = server.model("override_settings.sd_model_checkpoint", overrides["sd_model_checkpoint"])
        else:
            model = server.model("sd_model_checkpoint", body.get("sd_model_checkpoint"))
        prompt = body.get("prompt", "")
        options: Dict[str, Any] = {}
        fields: Dict[str, str] = {"prompt": "prompt"}
        for field, name in _A1111_FIELDS.items():
            if body.get(field) is not None:
                options[name], fields[name] = body[field], field
        clip_stop = overrides.get("CLIP_stop_at_last_layers")
        if clip_stop is not None and "clip_skip" not in options:
            options["clip_skip"], fields["clip_skip"] = clip_stop, "override_settings.CLIP_stop_at_last_layers"
        sampler_field = "sampler_name" if body.get("sampler_name") is not None else "sampler_index"
        if body.get(sampler_field) is not None:
            chosen, schedule = F.sampler_and_scheduler(sampler_field, body[sampler_field])
            options["sampler"], fields["sampler"] = chosen, sampler_field
            if schedule is not None:
                options["scheduler"], fields["scheduler"] = schedule, sampler_field
        if body.get("scheduler") is not None:
            options["scheduler"], fields["scheduler"] = F.scheduler("scheduler", body["scheduler"]), "scheduler"
        batch = [body.get(name) for name in ("batch_size", "n_iter")]
        if any(value is not None for value in batch):
            for name, value in zip(("batch_size", "n_iter"), batch):
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise FieldError(400, name, f"{name} must be a positive int, not {value!r}")
            # n_iter batches of batch_size: A1111 seeds them seed + i, as one batch of the product is seeded.
            options["batch_count"] = (batch[0] or 1) * (batch[1] or 1)
            fields["batch_count"] = "batch_size" if batch[1] is None else "n_iter"
        return model, prompt, options, fields

    async def a1111_run(request: Request, body: Dict[str, Any], model, prompt, options, fields):
        # Previews (the core's cheap latent projection by default) feed progress's current_image.
        job = server.submit(model, prompt, options, fields, keep=False, preview=True)
        await server.wait(request, job)
        size = _png_size(job.images[0]) if job.images else (options.get("width"), options.get("height"))
        texts = [server.describe(job, job.seed + index, size) for index in range(len(job.images))]
        info = {"prompt": prompt, "negative_prompt": options.get("negative_prompt", ""), "seed": job.seed,
                "all_seeds": [job.seed + index for index in range(len(job.images))], "infotexts": texts}
        return {"images": _images_b64(job), "parameters": body, "info": json.dumps(info)}

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request):
        body = await server.json_body(request)
        model, prompt, options, fields = a1111_options(body)
        return await a1111_run(request, body, model, prompt, options, fields)

    @app.post("/sdapi/v1/img2img")
    async def img2img(request: Request):
        body = await server.json_body(request)
        model, prompt, options, fields = a1111_options(body)
        images = body.get("init_images")
        if not isinstance(images, list) or not images:
            raise FieldError(400, "init_images", "init_images must be a list of one base64 image")
        if len(images) > 1:  # A1111 runs a batch over them; here they would be dropped without a word
            raise FieldError(400, "init_images", f"init_images: {len(images)} images; this server takes one per "
                                                 "request")
        options["init_image"] = await server.image("init_images[0]", images[0])
        fields["init_image"] = "init_images"
        if body.get("denoising_strength") is not None:
            options["strength"], fields["strength"] = body["denoising_strength"], "denoising_strength"
        if body.get("mask") is not None:
            mask = await server.image("mask", body["mask"], "mask")
            if body.get("inpainting_mask_invert") in (1, True):
                mask = 255 - mask
            options["mask"], fields["mask"] = mask, "mask"
        return await a1111_run(request, body, model, prompt, options, fields)

    @app.get("/sdapi/v1/progress")
    async def progress(skip_current_image: bool = False):
        job = server.worker.running
        steps = job.steps if job else 0
        step = job.step if job else 0
        fraction = step / steps if steps else 0.0
        seconds = job.seconds_per_step if job else 0.0
        state = {"skipped": False, "interrupted": bool(job and job.cancel_requested), "job": job.id if job else "",
                 "job_count": server.worker.queued() + len(server.worker.running_jobs()), "job_timestamp": "",
                 "job_no": 0, "sampling_step": step, "sampling_steps": steps}
        return {"progress": fraction, "eta_relative": seconds * max(0, steps - step), "state": state,
                "current_image": None if skip_current_image or job is None else job.latest_preview,
                "textinfo": None}

    @app.post("/sdapi/v1/interrupt")
    async def interrupt():
        server.worker.interrupt()
        return {}

    @app.get("/sdapi/v1/samplers")
    async def samplers():
        return [{"name": F.SAMPLER_LABELS.get(s.core_name, s.core_name), "aliases": [s.core_name], "options": {}}
                for s in Sampler]

    @app.get("/sdapi/v1/schedulers")
    async def schedulers():
        return [{"name": s.core_name, "label": F.SCHEDULER_LABELS.get(s.core_name, s.core_name), "aliases": None,
                 "default_rho": -1, "need_inner_model": False} for s in Scheduler]

    @app.get("/sdapi/v1/sd-models")
    async def sd_models():
        listed = []
        for model in models:
            main = model.components.get("model") or model.components.get("diffusion_model")
            filename = os.path.basename(str(main)) if main else ""  # the name only: paths stay on the server
            listed.append({"title": model.name, "model_name": model.name, "hash": None, "sha256": None,
                           "filename": filename, "config": None, "loaded": model.loaded})
        return listed

    @app.get("/sdapi/v1/loras")
    async def loras():
        folder = models.default.lora_dir
        if folder is None:
            return []
        names = sorted(entry.name for entry in os.scandir(folder)
                       if entry.is_file() and entry.name.lower().endswith(LORA_EXTENSIONS))
        return [{"name": os.path.splitext(n)[0], "alias": os.path.splitext(n)[0], "path": n, "metadata": {}}
                for n in names]

    # -- the job API -------------------------------------------------------------------------------------
    async def job_options(body: Dict[str, Any]) -> Tuple[Model, Any, Dict[str, Any], Dict[str, str], bool]:
        if body.get("prompt") is None:
            raise FieldError(400, "prompt", "prompt is required")
        preview = body.get("preview", False)
        if not isinstance(preview, bool):
            raise FieldError(400, "preview", "preview must be true or false")
        known = ("prompt", "model", "preview", "loras", "ref_images", *F.IMAGE_FIELDS, *F.JSON_ROWS)
        for name in body:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=3)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                raise FieldError(400, name, f"unknown field {name!r}{hint}")
        model = server.model("model", body.get("model"))
        options: Dict[str, Any] = {}
        fields: Dict[str, str] = {"prompt": "prompt"}
        server.table_fields(body, F.JSON_ROWS, options, fields)
        for name in F.IMAGE_FIELDS:
            if body.get(name) is not None:
                options[name] = await server.image(name, body[name], "mask" if name == "mask" else "RGB")
                fields[name] = name
        if body.get("ref_images") is not None:
            options["ref_images"] = await server.ref_images("ref_images", body["ref_images"])
            fields["ref_images"] = "ref_images"
        if body.get("loras") is not None:
            options["loras"], fields["loras"] = server.loras(model, "loras", body["loras"]), "loras"
        return model, body["prompt"], options, fields, preview

    def find_job(job_id: str) -> Job:
        job = server.worker.jobs.get(job_id)
        if job is None:
            raise FieldError(404, "id", f"no job {job_id!r} (finished jobs are kept for a while only)")
        return job

    @app.post("/v1/jobs", status_code=202)
    async def submit_job(request: Request):
        model, prompt, options, fields, preview = await job_options(await server.json_body(request))
        job = server.submit(model, prompt, options, fields, keep=True, preview=preview)
        return JSONResponse(_job_status(server, job), status_code=202)

    @app.get("/v1/jobs/{job_id}")
    async def job_status(job_id: str):
        return _job_status(server, find_job(job_id))

    @app.delete("/v1/jobs/{job_id}")
    async def cancel_job(job_id: str):
        job = find_job(job_id)
        server.worker.cancel(job)
        return {"id": job.id, "state": job.state}

    @app.get("/v1/jobs/{job_id}/events")
    async def job_events(job_id: str):
        job = find_job(job_id)

        async def stream():
            index = 0
            while True:
                while index < len(job.events):
                    event = job.events[index]
                    index += 1
                    if event is SUPERSEDED:  # a preview frame a later one replaced
                        continue
                    name, data = event
                    yield f"event: {name}\ndata: {json.dumps(data)}\n\n"
                    if name in FINISHED:  # the last event (job.state changes just before it is appended)
                        return
                job.changed.clear()
                if index < len(job.events):  # appended while this stream was sending
                    continue
                try:
                    await asyncio.wait_for(job.changed.wait(), 15)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"  # a comment line: proxies keep the stream open

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


@functools.lru_cache(maxsize=1)
def _page() -> str:
    from importlib import resources

    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def _form_value(name: str, text: str) -> Any:
    """A multipart field's text as the JSON value the same field would have (numbers, booleans, lists)."""
    row = IMAGE.rows.get(name)
    kind = "int" if name in ("n", "seed") else (row.kind if row is not None else "text")
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
        if kind == "bool":
            return {"true": True, "1": True, "false": False, "0": False}[text.strip().lower()]
        if kind in ("ints", "floats") or name == "loras":
            return json.loads(text)
    except (ValueError, KeyError, RecursionError):  # RecursionError: JSON nested too deeply
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise FieldError(400, name, f"{name}={shown!r} is not {_FORM_KINDS.get(kind, 'JSON')}") from None
    return text


_FORM_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "ints": "a JSON list of integers",
               "floats": "a JSON list of numbers"}


def _png_size(data: bytes) -> Tuple[int, int]:
    """(width, height) of a PNG file from its header (IHDR, the first chunk)."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


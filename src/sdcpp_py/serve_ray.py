"""The server's app on Ray Serve: the same OpenAI, AUTOMATIC1111 and job routes behind Ray's HTTP proxy, with one
context (or one config's models) per replica (``pip install 'sdcpp-py[ray]'``).

    serve run sdcpp_py.serve_ray:app diffusion_model=flux1-schnell-q4_0.gguf clip_l=clip_l.safetensors \\
        t5xxl=t5xxl_q8_0.gguf vae=ae.safetensors num_replicas=2
    serve run sdcpp_py.serve_ray:app config=models.toml max_loaded=2 queue_size=4 api_key=KEY

    from ray import serve
    from sdcpp_py import serve_ray
    serve.run(serve_ray.build({"diffusion_model": "...", "vae": "...", "num_replicas": 2}))

Arguments: the Context's keywords (paths relative to the folder the app is built in: give absolute ones in a
``serve deploy`` config, whose builder runs on the cluster), or ``config`` (the TOML file of
``sdcpp serve --config``) with ``max_loaded`` and optionally ``n_threads``; the server's limits (``queue_size``,
``api_key``, ``max_pixels``, ``max_n``, ``max_body``, ``max_ref_images``, ``model_name``); and the deployment's
``num_replicas`` (a number or ``auto``), ``num_gpus`` (per replica; 1 by default for a CUDA or Vulkan build)
and ``num_cpus`` (per replica; ``n_threads`` by default for a CPU build). Each replica loads its own contexts,
so the model files must be at the same paths on every node (and on the one that builds the app, where they are
checked).
A replica takes ``queue_size + 1`` generations at a time (one generating, the rest queued) and answers 429
beyond them; ``max_ongoing_requests`` leaves room for status and progress requests besides. A client that
goes away cancels its job (Ray cancels the request).
Responses carry ``X-Sdcpp-Replica`` (the replica's Ray id). The job API (``/v1/jobs``) keeps each job in
the replica that took it: polling it through the proxy may reach another replica, so use it with one replica.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Dict, Mapping, Optional, Tuple

try:
    from ray import serve
except ImportError as _error:  # pragma: no cover - depends on the environment
    raise ImportError(f"sdcpp_py.serve_ray needs Ray Serve: pip install 'sdcpp-py[ray]' ({_error})") from _error

from . import BACKEND
from ._params import CONTEXT

__all__ = ["app", "build", "deployment", "parse_args"]

DEPLOYMENT_NAME = "sdcpp"
LIGHT_REQUESTS = 16  # requests beyond the queue a replica takes at once: status, progress, event streams
SETTINGS_INTS = {"queue_size": 0, "max_pixels": 1, "max_n": 1, "max_body": 1, "max_ref_images": 0}  # lowest
SETTINGS_TEXT = ("api_key", "model_name")
DEPLOYMENT_KEYS = ("config", "max_loaded", "num_replicas", "num_gpus", "num_cpus")
KNOWN = tuple(CONTEXT.rows) + tuple(SETTINGS_INTS) + SETTINGS_TEXT + DEPLOYMENT_KEYS
MAX_RESOURCE = 2**20  # num_cpus / num_gpus per replica: more is a typo (no node has it), and Ray would wait forever
GPU_BACKENDS = ("cuda", "vulkan")  # what Ray schedules as "GPU" (it has no resource for Apple's Metal GPUs)
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


# -- the arguments (on the machine that builds the app) -------------------------------------------------

def _bool(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value  # Context() checks it
    text = value.strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{key}={value!r} is not true or false")


def _number(key: str, value: Any, kind: type) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return kind(value.strip())
    except ValueError:
        raise ValueError(f"{key}={value!r} is not {'an int' if kind is int else 'a number'}") from None


def _path(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)) and os.fspath(value):
        return os.path.abspath(os.path.expanduser(os.fspath(value)))
    return value  # Context() refuses what is not a path


def _context_value(key: str, value: Any) -> Any:
    """``value`` of Context keyword ``key`` from its text, by the row's kind (Context() checks it further)."""
    kind = CONTEXT[key].kind
    if kind == "path" or key == "lora_dir":
        return _path(value)
    if kind == "int":
        return _number(key, value, int)
    if kind == "float":
        return _number(key, value, float)
    if kind == "bool":
        return _bool(key, value)
    if key == "vae_decode_only" and isinstance(value, str):
        return None if value.strip().lower() in ("none", "auto", "") else _bool(key, value)
    if key == "embeddings" and isinstance(value, str):
        return [_path(item.strip()) for item in value.split(",") if item.strip()]  # paths separated by commas
    return value  # enums by name, tensor_type_rules: as given


def _physical_cores() -> int:
    from . import physical_cores

    return physical_cores()


def _unknown(key: str) -> ValueError:
    if key in ("workers", "devices"):
        return ValueError(f"{key}: on Ray each replica is one worker with the GPUs Ray gives it; "
                          "use num_replicas (and num_gpus) instead")
    close = difflib.get_close_matches(key, KNOWN, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ValueError(f"unknown argument {key!r}{hint}")


def parse_args(args: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``args`` (``serve run``'s ``key=value`` texts, or Python values) as (what each replica builds its app
    from, the deployment's options). ValueError naming the argument for an unknown key or a bad value; the
    models are checked as ``Context()`` checks them (their files' headers included), without loading."""
    from .server._models import Model
    from .server.app import Settings, check_settings

    context: Dict[str, Any] = {}
    settings: Dict[str, Any] = {}
    extra: Dict[str, Any] = {}
    for raw_key, value in args.items():
        key = str(raw_key).replace("-", "_")
        if key not in KNOWN:
            raise _unknown(str(raw_key))
        if value is None:
            continue
        if key in CONTEXT:
            context[key] = _context_value(key, value)
        elif key in SETTINGS_INTS:
            settings[key] = _number(key, value, int)
            if isinstance(settings[key], bool) or not isinstance(settings[key], int) \
                    or settings[key] < SETTINGS_INTS[key]:
                raise ValueError(f"{key} must be an int of at least {SETTINGS_INTS[key]}, not {value!r}")
        elif key in SETTINGS_TEXT:
            settings[key] = str(value)
            if key == "model_name" and not (settings[key].strip() and settings[key].isprintable()):
                # Clients send it back as "model": an empty name or a control character could not be matched.
                raise ValueError(f"model_name must be non-empty printable text (no control characters), not {value!r}")
        else:
            extra[key] = value
    if context.get("n_threads") is not None and context["n_threads"] <= 0:
        context["n_threads"] = None  # as sd-cli: <= 0 means the physical cores

    max_loaded = _number("max_loaded", extra.get("max_loaded", 1), int)
    if isinstance(max_loaded, bool) or not isinstance(max_loaded, int) or max_loaded < 1:
        raise ValueError(f"max_loaded must be an int of at least 1, not {extra['max_loaded']!r}")
    n_threads = context.get("n_threads")
    if extra.get("config") is not None:
        others = sorted(set(context) - {"n_threads"})
        if others:
            raise ValueError(f"config gives each model's Context options in the file; drop {others[0]}")
        if "model_name" in settings:
            raise ValueError("config names its models itself ([models.NAME]); drop model_name")
        models = _config(extra["config"], max_loaded)
        specs = []
        for model in models:
            options = dict(model.options)
            if n_threads is not None and options.get("n_threads") is None:
                options["n_threads"] = n_threads
            specs.append((model.name, options, model.default))
    else:
        if "max_loaded" in extra:
            raise ValueError("max_loaded needs config (one model is always loaded)")
        if not any(context.get(name) for name in CONTEXT.rows if CONTEXT[name].kind == "path"):
            raise ValueError("no model: give model=CHECKPOINT, or diffusion_model=... with its parts "
                             "(clip_l=..., vae=...), or config=models.toml")
        name = settings.get("model_name", "sdcpp")
        try:
            Model.from_options(name, context, default=True)  # every check Context() makes, without loading
        except TypeError as error:  # CONTEXT.bind's unknown keyword cannot happen here: a bad value's type
            raise ValueError(str(error)) from None
        specs = [(name, context, True)]
    check_settings(Settings(**settings))  # here, not first in a replica (a bad api_key)
    replica = {"models": specs, "max_loaded": max_loaded, "settings": settings}
    return replica, _deployment_options(extra, settings, n_threads)


def _config(value: Any, max_loaded: int):
    """The models of the TOML file ``value``, ValueError naming ``config`` for a bad one."""
    from .server._models import Models

    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f"config must be the path of a TOML file, not {value!r}")
    try:
        return Models.from_config(_path(os.fspath(value)), max_loaded)  # a binary file too is a ValueError
    except ValueError as error:
        raise ValueError(f"config: {error}") from None


def _deployment_options(extra: Dict[str, Any], settings: Dict[str, Any], n_threads: Optional[int]) -> Dict[str, Any]:
    # One generating and queue_size queued, as the replica's worker takes them, plus room for the light
    # requests (progress, health, job status, event streams) so that they never wait behind generations, and
    # so that a replica whose queue is full answers 429 itself rather than Ray holding the request.
    options: Dict[str, Any] = {"name": DEPLOYMENT_NAME,
                               "max_ongoing_requests": settings.get("queue_size", 8) + 1 + LIGHT_REQUESTS}
    # Ray's default (1) unless given, so that .options(autoscaling_config=...) or a config file's can apply.
    num_replicas = extra.get("num_replicas")
    if isinstance(num_replicas, str) and num_replicas.strip().lower() == "auto":
        options["num_replicas"] = "auto"
    elif num_replicas is not None:
        options["num_replicas"] = _number("num_replicas", num_replicas, int)
        if isinstance(options["num_replicas"], bool) or not isinstance(options["num_replicas"], int) \
                or options["num_replicas"] < 1:
            raise ValueError(f"num_replicas must be 'auto' or an int of at least 1, not {num_replicas!r}")
    actor: Dict[str, Any] = {}
    for key in ("num_gpus", "num_cpus"):
        if extra.get(key) is not None:
            value = _number(key, extra[key], float)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_RESOURCE:
                raise ValueError(f"{key} must be a number from 0 to {MAX_RESOURCE}, not {extra[key]!r}")
            actor[key] = value
    # The backend this package was built with (what sdcpp_py.backends()["built_with"] says), read without
    # asking ggml for its devices here: this machine need not have the replicas' GPUs.
    if "num_gpus" not in actor and BACKEND in GPU_BACKENDS:
        actor["num_gpus"] = 1
    if "num_cpus" not in actor and BACKEND == "cpu":
        # The cores its generations keep busy (a Context's default: all physical cores of its node).
        actor["num_cpus"] = n_threads or _physical_cores()
    if actor:
        options["ray_actor_options"] = actor
    return options


# -- the replica ----------------------------------------------------------------------------------------

class _ReplicaHeader:
    """ASGI middleware: ``X-Sdcpp-Replica: ID`` on every response, so a client sees which replica answered."""

    def __init__(self, app, replica: str):
        self.app, self.header = app, (b"x-sdcpp-replica", replica.encode("ascii", "replace"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def sending(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), self.header])
            await send(message)

        await self.app(scope, receive, sending)


def _replica_id() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # not in a replica (or an older Ray): the process is as good a name
        return f"pid{os.getpid()}"


def _vulkan_devices() -> None:
    """A Vulkan build sees every GPU of the node: give it the ones Ray gave this replica (Ray sets
    CUDA_VISIBLE_DEVICES only), numbered as ``sdcpp serve --devices`` numbers them."""
    if BACKEND != "vulkan" or "GGML_VK_VISIBLE_DEVICES" in os.environ:
        return
    import ray

    ids = ray.get_runtime_context().get_accelerator_ids().get("GPU") or []
    if ids:
        os.environ["GGML_VK_VISIBLE_DEVICES"] = ",".join(str(item) for item in ids)


def replica_app(spec: Dict[str, Any]):
    """The FastAPI app of one replica, its default model loaded (so a replica is ready, or fails to start,
    before it takes requests). Its lifespan (run by Ray in the replica) starts the worker thread and, when the
    replica stops, cancels what is left and closes the contexts."""
    _vulkan_devices()
    from .server._models import Model, Models
    from .server.app import Settings, create_app

    models = Models([Model.from_options(name, options, default) for name, options, default in spec["models"]],
                    spec["max_loaded"])
    models.context(models.default)  # the worker thread is not started yet: loading here is safe
    try:
        application = create_app(models, Settings(**spec["settings"]))
        application.add_middleware(_ReplicaHeader, replica=_replica_id())
    except BaseException:
        models.close()
        raise
    return application


def _asgi_builder(spec: Dict[str, Any]):
    def build_asgi_app():  # a function: Ray Serve calls it in each replica (serve.ingress(builder))
        return replica_app(spec)

    return build_asgi_app


# -- the public builders --------------------------------------------------------------------------------

def deployment(args: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> "serve.Deployment":
    """The Serve deployment of ``args`` (and keyword arguments, the same names), not bound yet: change its
    options (``.options(autoscaling_config=...)``) and ``.bind()`` it."""
    replica, options = parse_args({**dict(args or {}), **kwargs})
    ingress = serve.ingress(_asgi_builder(replica))()
    return serve.deployment(ingress, **options)


def build(args: Mapping[str, Any]) -> "serve.Application":
    """The Serve application of ``args``: ``serve.run(build({...}))``."""
    return deployment(args).bind()


def app(args: Dict[str, str]) -> "serve.Application":
    """The application builder of ``serve run sdcpp_py.serve_ray:app key=value ...``."""
    return build(args)

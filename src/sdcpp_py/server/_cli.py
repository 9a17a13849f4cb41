"""The command line of ``sdcpp serve`` / ``python -m sdcpp_py.server``: the Context's flags as sd-cli spells
them (from the option table's rows, as ``sdcpp generate`` has them) and the server's own."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .._params import COMPONENTS, CONTEXT
from .._sdcli import add_option_flags


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The Context's flags (every CONTEXT row with an sd-cli flag), then the server's."""
    add_option_flags(parser, (CONTEXT,))
    server = parser.add_argument_group("server")
    add = server.add_argument
    add("--config", metavar="TOML", help="serve the models of this file by name ([models.NAME] tables of Context "
                                         "keywords) instead of the model of the flags above")
    add("--max-loaded", type=int, metavar="N", help="with --config: most models loaded at once; the least "
                                                    "recently used is closed first (default 1)")
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    add("--port", type=int, default=7860)
    add("--workers", type=int, metavar="N", help="generate in N worker processes, each with its own copy of the "
                                                 "model (default: one thread of the server's process); with "
                                                 "no -t/--threads each gets its share of the cores")
    add("--devices", metavar="LIST", help="comma-separated GPU of each worker process (CUDA/Vulkan device "
                                          "numbers; worker i gets the i-th, cycling); implies --workers "
                                          "len(LIST) when --workers is not given")
    add("--queue-size", type=int, default=8, help="jobs waiting behind the running ones; more get 429")
    add("--api-key", help="require 'Authorization: Bearer KEY' (printable ASCII) on everything but /health and "
                           "the page at / (static: it asks for the key)")
    add("--max-pixels", type=int, default=2048 * 2048, help="largest width*height of an image")
    add("--max-n", type=int, default=4, help="most images per request")
    add("--max-ref-images", type=int, default=10, help="most reference images (ref_images) per request, of at most "
                                                      "4 times --max-pixels pixels together")
    add("--max-body", type=int, default=64 * 2**20, help="largest request body in bytes")
    add("--model-name", help="the model's name in /v1/models and requests' model field (default sdcpp)")
    add("-v", "--verbose", action="store_true", help="show the core's log")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdcpp_py.server", allow_abbrev=False,
                                     description="Serve models over HTTP (OpenAI Images, A1111, jobs).")
    add_flags(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the model (or read the config, whose models load on first use), then serve until interrupted."""
    try:
        import uvicorn

        from .app import Settings, check_settings, create_app
    except ImportError as error:
        raise ValueError(f"sdcpp serve needs the server extra: pip install 'sdcpp-py[server]' ({error})") from None
    from .. import Context
    from ._models import Model, Models

    options = {name: value for name, value in vars(args).items() if name in CONTEXT}
    for flag, value, low in (("--queue-size", args.queue_size, 0), ("--max-pixels", args.max_pixels, 1),
                             ("--max-n", args.max_n, 1), ("--max-body", args.max_body, 1),
                             ("--max-loaded", args.max_loaded, 1), ("--max-ref-images", args.max_ref_images, 0)):
        if value is not None and value < low:
            raise ValueError(f"{flag} must be at least {low}, not {value}")
    devices = _devices(args.devices)
    workers = args.workers if args.workers is not None else (len(devices) if devices else 0)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, not {args.workers}")
    settings = Settings(model_name=args.model_name or "sdcpp", queue_size=args.queue_size, api_key=args.api_key,
                        max_pixels=args.max_pixels, max_n=args.max_n, max_body=args.max_body,
                        max_ref_images=args.max_ref_images, workers=workers, devices=devices)
    check_settings(settings)  # before a model loads
    serve = dict(host=args.host, port=args.port, log_level="info" if args.verbose else "warning",
                 timeout_graceful_shutdown=5)  # a running generation is cancelled by the app's shutdown
    if args.config is not None:
        # One place for a model's options: the file (a flag too would leave which one wins unclear).
        if options:
            flag = CONTEXT[sorted(options)[0]].flags[0]
            raise ValueError(f"--config gives each model's Context options in the file; drop {flag}")
        if args.model_name is not None:
            raise ValueError("--config names its models itself ([models.NAME]); drop --model-name")
        models = Models.from_config(args.config, args.max_loaded or 1)
        if workers:
            for model in models:
                _share_cores(model.options, workers)
        uvicorn.run(create_app(models, settings), **serve)  # the app closes the contexts it loaded
        return 0
    if args.max_loaded is not None:
        raise ValueError("--max-loaded needs --config (one model is always loaded)")
    if not any(options.get(name) for name in COMPONENTS):
        raise ValueError("no model: pass -m/--model or --diffusion-model with its parts, or --config")
    if options.get("n_threads") is not None and options["n_threads"] <= 0:
        options["n_threads"] = None  # sd-cli: <= 0 means the physical cores
    if workers:
        # Checked here as Context() would check it; each worker process loads its own copy.
        _share_cores(options, workers)
        models = Models([Model.from_options(settings.model_name, options, default=True)])
        uvicorn.run(create_app(models, settings), **serve)
        return 0
    with Context(**options) as context:
        uvicorn.run(create_app(context, settings), **serve)
    return 0


def _devices(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    devices = [item.strip() for item in text.split(",")]
    if not all(devices) or any(" " in item for item in devices):
        raise ValueError(f"--devices {text!r}: give device numbers separated by commas, e.g. 0,1")
    return devices


def _share_cores(options: dict, workers: int) -> None:
    """Without -t/--threads, each of ``workers`` processes gets its share of the physical cores (all of them
    each would make the processes fight for the cores)."""
    if options.get("n_threads") is None:
        from .. import physical_cores

        options["n_threads"] = max(1, physical_cores() // workers)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    try:
        return run(args)
    except (ValueError, TypeError, OSError) as error:
        print(f"sdcpp serve: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # SdcppError: the core could not load the model
        print(f"sdcpp serve: error: {str(error).splitlines()[0] if str(error) else type(error).__name__}",
              file=sys.stderr)
        return 1

"""``sdcpp serve``: one model, or several by name, behind OpenAI's Images API, AUTOMATIC1111's API and a job
API with progress events, on FastAPI + uvicorn (``pip install 'sdcpp-py[server]'``).

    from sdcpp_py.server import Models, Settings, create_app
    app = create_app(sdcpp_py.Context(...), Settings(queue_size=8, api_key="..."))
    app = create_app(Models.from_config("models.toml", max_loaded=2))  # loaded on first use

FastAPI is imported only when ``create_app`` or ``Settings`` is first used, so ``sdcpp serve --help`` and
``import sdcpp_py`` work without it.
"""

from __future__ import annotations

__all__ = ["Models", "Settings", "create_app", "main"]


def __getattr__(name: str):
    if name in ("Settings", "create_app"):
        from . import app

        return getattr(app, name)
    if name == "Models":
        from ._models import Models

        return Models
    if name == "main":
        from ._cli import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

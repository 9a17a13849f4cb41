"""The models a server serves by name: one caller's Context, or the entries of a ``--config`` TOML file,
loaded on first use and kept in a least-recently-used set of at most ``max_loaded`` contexts. No FastAPI here.

A config is checked in full at startup (option names and values by the ``CONTEXT`` table, component files by
their headers) without loading anything, so a request can be checked against its model's facts before the
model is loaded. Loading and closing happen on the worker thread only, between jobs.
"""

from __future__ import annotations

import collections
import difflib
import logging
import os
from typing import Any, Dict, Iterator, List, Optional

from .._context import prepare_context
from .._images import fs_path
from .._model import ModelFacts, spatial_multiple
from .._params import CONTEXT

log = logging.getLogger("sdcpp_py.server")


class Model:
    """One served model: its name, its Context keywords and the facts its requests are checked against."""

    def __init__(self, name: str, options: Dict[str, Any], facts: ModelFacts, lora_dir: Optional[str],
                 context=None, default: bool = False):
        self.name, self.options, self.facts, self.lora_dir = name, options, facts, lora_dir
        self.components = facts.components
        self.architecture = facts.architecture
        self.multiple = spatial_multiple(facts.architecture) if facts.architecture else None
        self.context = context
        self.owned = context is None  # a context given by the caller is the caller's to close
        self.default = default
        self.loaded_in: set = set()  # the worker processes that have it loaded (--workers)

    @classmethod
    def from_options(cls, name: str, options: Dict[str, Any], default: bool = False) -> "Model":
        """A model of Context keywords, checked as ``Context()`` checks them (files' headers included) and
        loaded on first use."""
        prepared = prepare_context(options)
        return cls(name, options, prepared.facts, prepared.lora_dir, default=default)

    @property
    def loaded(self) -> bool:
        return (self.context is not None and not self.context.closed) or bool(self.loaded_in)


class Models:
    """The served models in order; the first (or the one marked default) answers requests naming none."""

    def __init__(self, models: List[Model], max_loaded: int = 1):
        if not models:
            raise ValueError("no models to serve")
        if max_loaded < 1:
            raise ValueError(f"--max-loaded must be at least 1, not {max_loaded}")
        self._models = {model.name: model for model in models}
        self.default = next((model for model in models if model.default), models[0])
        self.max_loaded = max_loaded
        self._lru: "collections.OrderedDict[str, Model]" = collections.OrderedDict()  # owned and loaded

    @classmethod
    def single(cls, context, name: str) -> "Models":
        """The caller's loaded ``context`` as the one model ``name`` (never closed here)."""
        return cls([Model(name, {}, context._facts, context.lora_dir, context=context, default=True)])

    @classmethod
    def from_config(cls, path, max_loaded: int = 1) -> "Models":
        return cls(read_config(path), max_loaded)

    def __iter__(self) -> Iterator[Model]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def find(self, name: str) -> Optional[Model]:
        return self._models.get(name)

    # -- the worker thread only ------------------------------------------------------------------------
    def context(self, model: Model):
        """``model``'s context, loaded now if it is not: the least recently used are closed first, so that at
        most ``max_loaded`` stay loaded (closing before loading keeps the peak memory at that many)."""
        if not model.owned:
            return model.context
        if model.context is not None and not model.context.usable:
            # A request failed inside the core, which refuses every later call on that context: load it again
            # rather than fail every request for the model from now on.
            log.warning("model %r: reloading it (a call failed inside the core)", model.name)
            self._lru.pop(model.name, None)
            model.context, context = None, model.context
            context.close()
        if model.loaded:
            self._lru.move_to_end(model.name)
            return model.context
        while len(self._lru) >= self.max_loaded:
            _, oldest = self._lru.popitem(last=False)
            oldest.context, context = None, oldest.context
            context.close()
        from .. import Context

        model.context = Context(**model.options)
        self._lru[model.name] = model
        return model.context

    def close(self) -> None:
        """Close the contexts loaded here (not the caller's)."""
        while self._lru:
            _, model = self._lru.popitem()
            model.context, context = None, model.context
            context.close()


# -- the config file -----------------------------------------------------------------------------------

def _toml():
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError("--config needs Python 3.11 or later (tomllib), or the tomli package: "
                             "pip install tomli") from None
    return tomllib


def read_config(path) -> List[Model]:
    """The models of a TOML file: one ``[models.NAME]`` table each, holding Context keywords (paths relative
    to the file's folder) and optionally ``default = true``. ValueError naming the file, model and key."""
    tomllib = _toml()
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError as error:  # tomllib reads UTF-8 only: a binary file
        raise ValueError(f"{path}: not valid TOML: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except RecursionError:  # deeply nested arrays or tables
        raise ValueError(f"{path}: not valid TOML: nested too deeply") from None
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror or error}") from None
    for key in document:
        if key != "models":
            raise ValueError(f"{path}: unknown key {key!r}: models go in [models.NAME] tables")
    entries = document.get("models")
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{path}: no models: add a [models.NAME] table with the model's files")
    folder = os.path.dirname(os.path.abspath(path))
    models = [_model(path, folder, name, entry) for name, entry in entries.items()]
    defaults = [model.name for model in models if model.default]
    if len(defaults) > 1:
        raise ValueError(f"{path}: models {defaults[0]!r} and {defaults[1]!r} are both marked default")
    return models


def _model(path: str, folder: str, name: str, entry: Any) -> Model:
    where = f"{path}: model {name!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a table of Context options ([models.{name}])")
    options: Dict[str, Any] = {}
    default = False
    for key, value in entry.items():
        if key == "default":
            if not isinstance(value, bool):
                raise ValueError(f"{where}: default must be true or false, not {value!r}")
            default = value
            continue
        if key not in CONTEXT:
            close = difflib.get_close_matches(key, list(CONTEXT.rows) + ["default"], n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ValueError(f"{where}: unknown key {key!r}{hint}")
        try:
            options[key] = _option(folder, key, value)
        except (TypeError, ValueError, OSError) as error:
            raise ValueError(f"{where}: {_naming(key, error)}") from None
    try:
        # Every check Context() makes, files' headers included: a wrong file is found now, not at a request.
        return Model.from_options(name, options, default)
    except (TypeError, ValueError, OSError) as error:
        raise ValueError(f"{where}: {error}") from None


def _naming(key: str, error: Exception) -> str:
    message = str(error)
    return message if message.startswith(key) else f"{key}: {message}"


def _relative(folder: str, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a path (a string), not {type(value).__name__}")
    return os.path.join(folder, os.path.expanduser(fs_path(key, value)))


def _option(folder: str, key: str, value: Any) -> Any:
    """``value`` of Context keyword ``key`` with paths made relative to the config's folder (prepare_context
    checks them all afterwards)."""
    if CONTEXT[key].kind == "path" or key == "lora_dir":
        return _relative(folder, key, value)
    if key == "embeddings":
        if isinstance(value, dict):
            return {name: _relative(folder, f"embeddings[{name!r}]", item) for name, item in value.items()}
        if isinstance(value, list):
            return [_relative(folder, f"embeddings[{index}]", item) for index, item in enumerate(value)]
    return value

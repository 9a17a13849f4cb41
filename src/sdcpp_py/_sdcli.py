"""sd-cli's command line, from the option tables: the flags of the vendored sd-cli with its names and meanings,
turned into a ``Plan`` of API calls. ``sdcpp generate`` (or ``sdcpp`` followed by sd-cli's flags) runs it.

The flags of Context and generation options come from the rows of ``_params`` (their ``flags``); the flags
below are those that fill a record (hires fix, cache, PhotoMaker), pick a mode or an output, or read a folder.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ._params import CONTEXT, IMAGE, VIDEO

MODES = ("img_gen", "vid_gen", "upscale", "convert", "metadata")
MODEL_EXTENSIONS = (".gguf", ".safetensors", ".pt")  # sd-cli's, for --embd-dir and prompt LoRAs
UPSCALER_EXTENSIONS = (".gguf", ".safetensors", ".pt", ".pth")  # sd-cli's, for --hires-upscalers-dir
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

# Record fields: flag -> (record, field, type). sd-cli's spelling, our record's field name.
HIRES_FLAGS = {
    "--hires-scale": ("scale", float), "--hires-width": ("width", int), "--hires-height": ("height", int),
    "--hires-steps": ("steps", int), "--hires-denoising-strength": ("denoising_strength", float),
    "--hires-upscale-tile-size": ("tile_size", int),
}
# --cache-option keys (common.cpp initialize_cache_params); "threshold" and "warmup" depend on the mode.
CACHE_OPTION_KEYS = {
    "start": ("start_percent", float), "end": ("end_percent", float), "decay": ("error_decay_rate", float),
    "relative": ("use_relative_threshold", "flag"), "reset": ("reset_error_on_compute", "flag"),
    "Fn": ("Fn_compute_blocks", int), "fn": ("Fn_compute_blocks", int), "Bn": ("Bn_compute_blocks", int),
    "bn": ("Bn_compute_blocks", int), "w": ("spectrum_w", float), "m": ("spectrum_m", int),
    "lam": ("spectrum_lam", float), "window": ("spectrum_window_size", int), "flex": ("spectrum_flex_window", float),
    "stop": ("spectrum_stop_percent", float),
}
# What sd-cli has and sdcpp refuses, with the reason (the only flags not taken).
REFUSED = {
    "--metadata-raw": "sdcpp prints the text metadata of an image, not hex dumps of other chunks",
    "--metadata-all": "sdcpp prints the text metadata of an image, not its structural chunks",
}
VIDEO_CONTAINERS = (".avi", ".webm")
# Where sd-cli's defaults differ from the API's and a pasted command must still mean what it means to sd-cli.
# The API keeps its own (see _params.PACKAGE_DEFAULTS): a context in a service lives for many calls.
CLI_DEFAULTS = {
    "lora_apply_mode": "auto",  # sd-cli's; the API's at_runtime avoids drift over many calls, a CLI run is one
    "lora_dir": ".",  # sd-cli reads <lora:name:w> tags from the current folder unless told another
}
CLI_VIDEO_DEFAULTS = {"frames": 1}  # sd-cli's --video-frames default (the core's record says 6)
DEFAULT_OUTPUT = {"convert": "output.gguf"}  # sd-cli's per mode; output.png otherwise
# The table options each non-generating mode uses (sd-cli builds its upscaler with these context options).
MODE_OPTIONS = {
    "upscale": {"init_image", "n_threads", "offload_params_to_cpu", "diffusion_conv_direct"},
    "convert": {"model", "diffusion_model", "vae", "weight_type", "tensor_type_rules"},
    "metadata": set(),
}  # sd-cli's own encoders; sdcpp writes frames, or an animated .webp
GENERATING = ("img_gen", "vid_gen")
# The modes that use each of this module's own flags (the tables' flags: MODE_OPTIONS and the tables). Only a
# given flag counts (their defaults are None, filled in by plan()); one not here (-M, -v, --progress) is any mode's.
OWN_FLAGS = {
    "prompt": ("-p/--prompt", GENERATING), "output": ("-o/--output", (*GENERATING, "upscale", "convert")),
    "output_begin_idx": ("--output-begin-idx", (*GENERATING, "upscale")), "canny": ("--canny", ("img_gen",)),
    "convert_name": ("--convert-name", ("convert",)),
    "disable_image_metadata": ("--disable-image-metadata", GENERATING), "fps": ("--fps", ("vid_gen",)),
    "preview_path": ("--preview-path", GENERATING), "embd_dir": ("--embd-dir", GENERATING),
    "hires": ("--hires", ("img_gen",)), "hires_upscaler": ("--hires-upscaler", ("img_gen",)),
    "hires_upscalers_dir": ("--hires-upscalers-dir", ("img_gen",)),
    **{f"hires_{name}": (flag, ("img_gen",)) for flag, (name, _) in HIRES_FLAGS.items()},
    "cache_mode": ("--cache-mode", GENERATING), "cache_option": ("--cache-option", GENERATING),
    "scm_mask": ("--scm-mask", GENERATING), "scm_policy": ("--scm-policy", GENERATING),
    "pm_id_images_dir": ("--pm-id-images-dir", ("img_gen",)),
    "pm_id_embed_path": ("--pm-id-embed-path", ("img_gen",)),
    "pm_style_strength": ("--pm-style-strength", ("img_gen",)),
    "upscale_model": ("--upscale-model", (*GENERATING, "upscale")),
    "upscale_repeats": ("--upscale-repeats", (*GENERATING, "upscale")),
    "upscale_tile_size": ("--upscale-tile-size", (*GENERATING, "upscale")),
    "image": ("--image", ("metadata",)), "metadata_format": ("--metadata-format", ("metadata",)),
    "metadata_brief": ("--metadata-brief", ("metadata",)), "lora": ("--lora", GENERATING),
}
# The own flags' defaults, set by plan() once it knows which were given.
OWN_DEFAULTS = {"fps": 16, "preview_path": "preview.png", "hires_upscaler": "Latent", "upscale_repeats": 1,
                "upscale_tile_size": 128, "metadata_format": "text"}


def _int_list(text: str) -> List[int]:
    """sd-cli's layer lists: "[7,8,9]", "7,8,9" or "[7 8 9]"."""
    return [int(item) for item in re.split(r"[,\s]+", text.strip().strip("[]")) if item]


def _float_list(text: str) -> List[float]:
    return [float(item) for item in re.split(r"[,\s]+", text.strip().strip("[]")) if item]


def _pair_of(kind):
    def parse(text: str):
        """sd-cli's [X]x[Y]: one number for both sides, or XxY."""
        parts = text.lower().split("x")
        if len(parts) == 1:
            return kind(parts[0])
        if len(parts) == 2:
            return kind(parts[0]), kind(parts[1])
        raise ValueError(f"expected N or XxY, got {text!r}")
    parse.__name__ = f"{kind.__name__} or XxY"
    return parse


_CONVERTERS = {"int": int, "float": float, "ints": _int_list, "floats": _float_list}
_SPECIAL_TYPES = {"vae_tile_size": _pair_of(int), "vae_relative_tile_size": _pair_of(float), "seed": int}


class _SetAll(argparse.Action):
    """A flag without a value that sets several options (sd-cli's --circular sets x and y)."""

    def __init__(self, option_strings, dest, targets, **kwargs):
        self.targets = targets
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        for name, value in self.targets:
            setattr(namespace, name, value)


def table_flags(tables=(CONTEXT, IMAGE, VIDEO)) -> Dict[str, List[tuple]]:
    """flag -> [(option name, value for a flag without one, or None)] from the option tables."""
    flags: Dict[str, List[tuple]] = {}
    for table in tables:
        for row in table:
            for flag in row.flags:
                entry = (row.name, True if row.kind == "bool" else None)
                if entry not in flags.setdefault(flag, []):
                    flags[flag].append(entry)
            for flag in row.negated_flags:
                flags.setdefault(flag, []).append((row.name, False))
    return flags


def add_option_flags(parser: argparse.ArgumentParser, tables=(CONTEXT, IMAGE, VIDEO)) -> None:
    """The sd-cli flags of the option tables' rows; given ones only end up in the namespace."""
    kinds = {row.name: row.kind for table in tables for row in table}
    spellings: Dict[tuple, List[str]] = {}  # one argument per meaning: -m and --model together
    for flag, targets in table_flags(tables).items():
        spellings.setdefault(tuple(targets), []).append(flag)
    for targets, flags in spellings.items():
        if targets[0][1] is not None:  # a switch
            parser.add_argument(*flags, action=_SetAll, targets=targets)
            continue
        assert len(targets) == 1, (flags, targets)
        name = targets[0][0]
        action = "append" if name == "ref_images" else "store"
        kind = _SPECIAL_TYPES.get(name) or _CONVERTERS.get(kinds[name], str)
        parser.add_argument(*flags, dest=name, action=action, type=kind, default=argparse.SUPPRESS,
                            metavar=name.upper())


def add_flags(parser: argparse.ArgumentParser) -> None:
    """sd-cli's flags on ``parser``; given ones only end up in the namespace (defaults are the API's)."""
    add_option_flags(parser)
    extra = parser.add_argument_group("sd-cli's mode, output, records and folders")
    add = extra.add_argument
    add("-M", "--mode", choices=MODES, default="img_gen")
    add("-p", "--prompt")
    add("-o", "--output",
        help="image path (.png, .jpg, .jpeg, .webp, .bmp); printf-style %%d numbers a sequence; a batch writes "
             "NAME_i.EXT, a video its frames the same way or an animated .webp")
    add("--output-begin-idx", type=int)
    add("-v", "--verbose", action="store_true", help="show the core's info log on stderr (its warnings show anyway)")
    add("--color", action="store_true", help="colour the log's level names")
    add("--canny", action="store_true", help="apply the Canny preprocessor to the control image")
    add("--convert-name", action="store_true", help="convert tensor names (convert mode)")
    add("--disable-image-metadata", action="store_true", help="write no parameters into the image")
    add("--fps", type=int, help="frames per second of an animated .webp video (default 16)")
    add("--preview-path", help="where --preview writes (default preview.png)")
    add("--embd-dir", help="textual-inversion embeddings: every .gguf/.safetensors/.pt file in the folder")
    add("--hires", action="store_true")
    add("--hires-upscaler",
        help="Lanczos, Nearest, Latent (default), Latent (nearest), ... or a model name under --hires-upscalers-dir")
    add("--hires-upscalers-dir")
    for flag, (name, kind) in HIRES_FLAGS.items():
        add(flag, dest=f"hires_{name}", type=kind)
    add("--cache-mode")
    add("--cache-option", help="key=value,... (threshold, start, end, decay, relative, reset, Fn, Bn, warmup, w, m, "
        "lam, window, flex, stop)")
    add("--scm-mask")
    add("--scm-policy", choices=("dynamic", "static"))
    add("--pm-id-images-dir")
    add("--pm-id-embed-path")
    add("--pm-style-strength", type=float)
    add("--upscale-model", help="ESRGAN model: upscale the results (img_gen) or -i (upscale mode)")
    add("--upscale-repeats", type=int, help="default 1")
    add("--upscale-tile-size", type=int, help="default 128")
    add("--image", help="the image to read (metadata mode)")
    add("--metadata-format", choices=("text", "json"), help="default text")
    add("--metadata-brief", action="store_true", help="truncate long values (metadata mode)")
    for flag, why in REFUSED.items():
        add(flag, action="store_true", help=f"refused: {why}")
    add("--lora", action="append", default=[], metavar="PATH[:MULTIPLIER]", help="sdcpp's: a LoRA by path")
    add("--progress", choices=("auto", "on", "off"), default="auto")


@dataclass
class Plan:
    """What a parsed command line asks for, before any file is opened."""

    mode: str
    prompt: Optional[str]
    context: Dict[str, Any] = field(default_factory=dict)  # Context keywords
    call: Dict[str, Any] = field(default_factory=dict)  # generate / generate_video keywords
    folders: Dict[str, str] = field(default_factory=dict)  # embd, pm_id_images, control_video, hires_upscalers
    hires: Optional[Dict[str, Any]] = None
    cache: Optional[Dict[str, Any]] = None
    photo_maker: Optional[Dict[str, Any]] = None


def plan(args: argparse.Namespace) -> Plan:
    """The API calls a parsed command line means; ValueError for what cannot be done, naming the flag."""
    for flag, why in REFUSED.items():
        if getattr(args, flag[2:].replace("-", "_"), False):
            raise ValueError(f"{flag}: not supported: {why}")
    result = Plan(args.mode, args.prompt)
    table = VIDEO if args.mode == "vid_gen" else IMAGE
    flags = table_flags()
    # Only what a table's flag set: the namespace also holds this module's own flags (--hires, --preview-path).
    given = {name: value for name, value in vars(args).items()
             if any(name == target for targets in flags.values() for target, _ in targets)}
    for name, value in given.items():
        if name in CONTEXT.rows:
            result.context[name] = value
        elif name in table.rows:
            result.call[name] = value
        if args.mode in MODE_OPTIONS and name not in MODE_OPTIONS[args.mode] or (
                name not in CONTEXT.rows and name not in table.rows):
            flag = next(flag for flag, targets in flags.items() if any(name == target for target, _ in targets))
            raise ValueError(f"{flag}: not used in {args.mode} mode")
    _check_own_flags(args)
    if args.mode in ("img_gen", "vid_gen") and args.prompt is None:
        raise ValueError(f"-p/--prompt is required in {args.mode} mode")
    if args.mode == "convert" and "model" in given and "diffusion_model" in given:
        raise ValueError("-M convert converts one file: give -m/--model or --diffusion-model, not both")
    if args.canny and "control_image" not in given:
        raise ValueError("--canny needs --control-image (the image it preprocesses)")
    if args.preview_path is not None and "preview_mode" not in given:
        raise ValueError("--preview-path needs --preview (no preview is written without it)")
    if args.output is None:
        args.output = DEFAULT_OUTPUT.get(args.mode, "output.png")
    if args.mode in ("img_gen", "vid_gen"):
        for name, value in CLI_DEFAULTS.items():
            result.context.setdefault(name, value)
    if args.mode == "vid_gen":
        for name, value in CLI_VIDEO_DEFAULTS.items():
            result.call.setdefault(name, value)
    if args.output_begin_idx is not None and args.output_begin_idx < 0:
        args.output_begin_idx = 0  # sd-cli clamps it
    seed = result.call.get("seed")
    if seed is not None and seed < 0:
        result.call["seed"] = -1  # sd-cli: any negative seed draws one
    threads = result.context.get("n_threads")
    if threads is not None and threads <= 0:
        result.context["n_threads"] = None  # sd-cli: <= 0 means the physical cores
    if result.call.get("high_noise_steps", 1) <= 0:
        result.call["high_noise_steps"] = None  # sd-cli: <= 0 means auto
    if result.call.get("clip_skip", 1) <= 0:
        result.call["clip_skip"] = -1  # sd-cli: <= 0 is "the model's"
    for flag, name in (("--embd-dir", "embd_dir"), ("--pm-id-images-dir", "pm_id_images_dir"),
                       ("--hires-upscalers-dir", "hires_upscalers_dir")):
        if getattr(args, name):
            result.folders[name] = getattr(args, name)
    if "control_frames" in result.call:
        result.folders["control_video"] = result.call.pop("control_frames")
    upscaler = args.hires_upscaler or OWN_DEFAULTS["hires_upscaler"]
    if args.hires and upscaler.strip().lower() != "none":  # sd-cli: "None" turns the fix off
        result.hires = {name: getattr(args, f"hires_{name}") for name, _ in HIRES_FLAGS.values()
                        if getattr(args, f"hires_{name}") is not None}
        result.hires["upscaler"] = upscaler
    elif not args.hires:
        given_hires = [flag for name, (flag, _) in OWN_FLAGS.items()
                       if name.startswith("hires_") and getattr(args, name) is not None]
        if given_hires:
            raise ValueError(f"{given_hires[0]}: the --hires-* options need --hires (sd-cli ignores them without it)")
    for name, value in OWN_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.cache_mode:
        result.cache = _cache(args)
    elif args.cache_option or args.scm_mask or args.scm_policy:
        raise ValueError("--cache-option, --scm-mask and --scm-policy need --cache-mode")
    if args.pm_id_images_dir or args.pm_id_embed_path or args.pm_style_strength is not None:
        result.photo_maker = {"id_embed_path": args.pm_id_embed_path}
        if args.pm_style_strength is not None:
            result.photo_maker["style_strength"] = args.pm_style_strength
    return result


def _check_own_flags(args) -> None:
    """ValueError for an own flag the mode does not use, or a value sd-cli refuses, naming the flag."""
    for name, (flag, modes) in OWN_FLAGS.items():
        value = getattr(args, name)
        if value is not None and value is not False and value != [] and args.mode not in modes:
            raise ValueError(f"{flag}: not used in {args.mode} mode")
    for flag, value in (("--fps", args.fps), ("--upscale-repeats", args.upscale_repeats),
                        ("--upscale-tile-size", args.upscale_tile_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} {value}: must be at least 1")
    if args.mode != "upscale" and not args.upscale_model:
        for flag, value in (("--upscale-repeats", args.upscale_repeats),
                            ("--upscale-tile-size", args.upscale_tile_size)):
            if value is not None:
                raise ValueError(f"{flag} needs --upscale-model (there is nothing to upscale with)")


def _cache(args) -> Dict[str, Any]:
    mode = args.cache_mode
    record: Dict[str, Any] = {"mode": mode}
    for item in (args.cache_option or "").split(","):
        if not item:
            continue
        key, equals, text = item.partition("=")
        if not equals:
            raise ValueError(f"--cache-option: {item!r} is not key=value")
        if key == "threshold":
            name, kind = ("reuse_threshold" if mode in ("easycache", "ucache") else "residual_diff_threshold"), float
        elif key == "warmup":
            name, kind = ("spectrum_warmup_steps" if mode == "spectrum" else "max_warmup_steps"), int
        elif key in CACHE_OPTION_KEYS:
            name, kind = CACHE_OPTION_KEYS[key]
        else:
            raise ValueError(f"--cache-option: unknown key {key!r}; known: threshold, warmup, "
                             f"{', '.join(k for k in CACHE_OPTION_KEYS if k not in ('fn', 'bn'))}")
        try:
            record[name] = float(text) != 0.0 if kind == "flag" else kind(text)
        except ValueError:
            raise ValueError(f"--cache-option: {key}={text!r} is not a number") from None
    _check_cache(record, args.cache_option)
    if args.scm_mask:
        record["scm_mask"] = args.scm_mask
    if args.scm_policy and mode in ("dbcache", "taylorseer", "cache-dit"):
        record["scm_policy_dynamic"] = args.scm_policy == "dynamic"
    return record


def _check_cache(record: Dict[str, Any], text: Optional[str]) -> None:
    """sd-cli's checks of --cache-option's values, before a model is read (the core checks none of them)."""
    from ._options import Cache

    for name in ("reuse_threshold", "residual_diff_threshold"):
        if name in record and not record[name] >= 0:
            raise ValueError(f"--cache-option {text!r}: threshold must be at least 0, not {record[name]}")
    if "start_percent" in record or "end_percent" in record:
        start = record.get("start_percent", Cache.start_percent)
        end = record.get("end_percent", Cache.end_percent)
        if not 0 <= start < end <= 1:
            raise ValueError(f"--cache-option {text!r}: start and end must satisfy 0 <= start < end <= 1, "
                             f"not start={start}, end={end}")


def files_in(folder: str, extensions, flag: str) -> List[str]:
    """The regular files of ``folder`` with one of ``extensions``, sorted by name (sd-cli's order)."""
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"{flag}: {folder!r} is not a folder")
    found = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    if not found:
        raise ValueError(f"{flag}: no {'/'.join(extensions)} file in {folder!r}")
    return found


def model_in(folder: str, name: str, flag: str) -> str:
    """sd-cli's lookup of a model by name in a folder: the name with one of the extensions, or as given. A name,
    not a path: nothing outside the folder."""
    if not name or os.path.basename(name) != name or name in (".", ".."):
        raise ValueError(f"{flag}: {name!r} is not a model name (no folders in it)")
    for candidate in (*(name + ext for ext in UPSCALER_EXTENSIONS), name):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise ValueError(f"{flag}: no model {name!r} in {folder!r} (tried {', '.join(UPSCALER_EXTENSIONS)})")

"""`sdcpp`: the command line, with flag names of the vendored sd-cli where they mean the same.

    sdcpp generate --diffusion-model flux.gguf --clip_l clip_l.safetensors --t5xxl t5.gguf --vae ae.safetensors \\
        -p "a lighthouse at dusk" -W 1024 -H 1024 --steps 4 --cfg-scale 1 -o out.png
    sdcpp inspect model.safetensors ...
    sdcpp convert model.safetensors model-q8_0.gguf --type q8_0
    sdcpp info
    sdcpp check

Bad input exits with status 2 and one line on stderr (``--debug`` shows the traceback); a failure in the core
exits with status 1. `generate -o` writes PNG (the generation parameters in a "parameters" text chunk), or with
Pillow JPEG and WebP (the parameters in the EXIF UserComment) and BMP (no parameters).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import List, Optional

from ._checks import resolve_seed
from ._enums import HiresUpscaler
from ._images import fs_path, regular_file
from ._params import COMPONENTS, IMAGE, VIDEO
from ._sdcli import (
    IMAGE_EXTENSIONS, MODEL_EXTENSIONS, VIDEO_CONTAINERS, add_flags, files_in, model_in, plan as make_plan,
)

_PRINTF_INDEX = re.compile(r"%0?\d*d")
SUBCOMMANDS = ("generate", "inspect", "convert", "split", "info", "check", "serve")

PILLOW_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}
OUTPUT_EXTENSIONS = (".png", *PILLOW_FORMATS)
_EXIF_USER_COMMENT_BYTES = 65533 - 200  # a JPEG APP1 segment's limit, less the rest of our EXIF block
_EXIF_IFD, _EXIF_USER_COMMENT = 0x8769, 0x9286  # numbers, not ExifTags' enums, which older Pillows lack


def _progress_enabled(choice: str) -> bool:
    return choice == "on" or (choice == "auto" and sys.stderr.isatty())


class ProgressBar:
    """A one-line text bar on stderr, redrawn per step (only when stderr is a terminal or forced)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, step: int, steps: int, seconds: float) -> None:
        if not self.enabled or steps <= 0:
            return
        width = 30
        filled = int(width * step / steps)
        rate = f"{seconds:.2f} s/it" if seconds >= 1 or seconds == 0 else f"{1 / seconds:.2f} it/s"
        sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {step}/{steps} {rate}  ")
        sys.stderr.flush()
        if step >= steps:
            sys.stderr.write("\n")


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="sd-cli's command line: txt2img / img2img / inpaint / edit, video "
                       "(-M vid_gen), upscale (-M upscale), convert (-M convert), metadata (-M metadata)")
    add_flags(p)


def _lora_arg(text: str):
    from . import Lora

    path, _, multiplier = text.rpartition(":") if ":" in text and not os.path.exists(text) else (text, "", "")
    try:
        return Lora(path or text, float(multiplier) if multiplier else 1.0)
    except ValueError:
        raise ValueError(f"--lora {text!r}: expected PATH or PATH:MULTIPLIER") from None


def _parameters_text(plan, values: dict, seed: int, size: tuple) -> str:
    """The generation parameters in the de-facto "parameters" PNG text format."""
    fields = [f"Steps: {values['steps']}", f"CFG scale: {values['cfg_scale']}", f"Seed: {seed}",
              f"Size: {size[0]}x{size[1]}", f"Sampler: {values['sampler'] or 'default'}",
              f"Scheduler: {values['scheduler'] or 'default'}", f"Guidance: {values['guidance']}"]
    models = ", ".join(f"{name}: {os.path.basename(str(path))}" for name, path in plan.context.items()
                       if name in COMPONENTS and path)
    negative = values["negative_prompt"]
    text = plan.prompt + (f"\nNegative prompt: {negative}" if negative else "")
    return f"{text}\n{', '.join(fields)}, Models: {models}, Generator: sdcpp-py"


def _check_output(output: str, video: bool = False, flag: str = "-o/--output",
                  paths: Optional[List[Path]] = None) -> str:
    """The output path's extension, once it is known the image can be written there (at each of ``paths``, the
    names the run writes; else at ``output``): checked before any model is read, so a typo does not cost a load
    and a generation."""
    path = Path(output)
    suffix = path.suffix.lower()
    if video and suffix in VIDEO_CONTAINERS:
        raise ValueError(f"{flag} {output!r}: sdcpp writes a video as frames (a .png name, numbered) or an "
                         f"animated .webp, not {suffix}")
    if suffix not in OUTPUT_EXTENSIONS:
        raise ValueError(f"{flag} {output!r}: unsupported extension {path.suffix or '(none)'!r}; "
                         f"use one of {', '.join(OUTPUT_EXTENSIONS)}")
    if suffix in PILLOW_FORMATS:
        try:
            import PIL.Image  # noqa: F401
        except ImportError:
            raise ValueError(f"{flag} {output!r}: writing {suffix} needs Pillow (pip install pillow), "
                             "or write .png") from None
    for target in paths or [path]:
        _check_target(target, f"{flag} {output!r}" + (f" ({str(target)!r})" if str(target) != output else ""))
    return suffix


def _check_target(path: Path, where: str) -> None:
    """ValueError (starting with ``where``) unless a file can be written at ``path``."""
    folder = path.parent
    if not folder.exists():
        raise ValueError(f"{where}: folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{where}: {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{where}: folder {str(folder)!r} is not writable")
    if path.is_dir():
        raise ValueError(f"{where}: is a folder; give a file name")
    if path.exists() and not path.is_file():  # writing to a FIFO would block until a reader comes
        raise ValueError(f"{where}: exists and is not a regular file")


def _write_image(path: Path, suffix: str, image, parameters: str) -> None:
    from ._png import write_png

    if suffix == ".png":
        write_png(path, image, {"parameters": parameters})
        return
    from PIL import Image

    picture = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    kind = PILLOW_FORMATS[suffix]
    options = {}
    if kind == "JPEG" and picture.mode == "RGBA":
        picture = picture.convert("RGB")  # JPEG has no alpha
    if kind in ("JPEG", "WEBP"):
        options["quality"] = 90
        # EXIF UserComment, as other Stable Diffusion tools store "parameters" in JPEG/WebP. Pillow writes
        # big-endian EXIF, hence UTF-16-BE after the charset prefix. BMP has no metadata to carry it.
        comment = b"UNICODE\0" + parameters.encode("utf-16-be", "backslashreplace")
        if kind == "WEBP" or len(comment) <= _EXIF_USER_COMMENT_BYTES:
            exif = Image.Exif()
            exif.get_ifd(_EXIF_IFD)[_EXIF_USER_COMMENT] = comment
            options["exif"] = exif
        else:
            print(f"sdcpp: note: parameters too long for JPEG's EXIF; {path} has none", file=sys.stderr)
    picture.save(path, kind, **options)


def _output_paths(output: str, count: int, begin: Optional[int]) -> List[Path]:
    """sd-cli's names: printf-style %d numbers from ``begin`` (0), else NAME_i.EXT for more than one."""
    start = 0 if begin is None else begin
    if _PRINTF_INDEX.search(output):
        return [Path(_PRINTF_INDEX.sub(lambda m: m.group(0) % (start + i), output)) for i in range(count)]
    path = Path(output)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}_{start + i}{path.suffix}") for i in range(count)]


def _context_options(plan) -> dict:
    options = dict(plan.context)
    if "embd_dir" in plan.folders:
        options["embeddings"] = _usable_embeddings(files_in(plan.folders["embd_dir"], MODEL_EXTENSIONS, "--embd-dir"))
    return options


def _usable_embeddings(paths: list) -> list:
    """The files of --embd-dir that the core can read as embeddings; sd-cli reads only those a prompt names,
    so one it cannot read (an F16 or SDXL one beside SD1 ones) is skipped with a warning, not fatal."""
    from ._headers import InvalidComponentError, check_component, check_embedding

    usable = []
    for path in paths:
        try:
            check_embedding(f"--embd-dir {os.path.basename(path)!r}", check_component("--embd-dir", path))
        except InvalidComponentError as error:
            logging.getLogger("sdcpp_py").warning("skipping an embedding: %s", error)
            continue
        usable.append(path)
    return usable


def _call_options(plan, args) -> dict:
    """The keywords of generate / generate_video: the plan's, its records, and the files of its folders."""
    from . import Cache, Hires, PhotoMaker, preprocess_canny

    options = dict(plan.call)
    if args.lora:
        options["loras"] = [_lora_arg(text) for text in args.lora]
    if plan.hires is not None:
        hires = dict(plan.hires)
        try:
            HiresUpscaler.coerce(hires["upscaler"], "--hires-upscaler")
        except ValueError:
            if "hires_upscalers_dir" not in plan.folders:
                raise ValueError(f"--hires-upscaler {hires['upscaler']!r} is no built-in upscaler; a model name "
                                 "needs --hires-upscalers-dir") from None
            hires["model_path"] = model_in(plan.folders["hires_upscalers_dir"], hires["upscaler"],
                                           "--hires-upscaler")
            hires["upscaler"] = HiresUpscaler.MODEL
        options["hires"] = Hires(**hires)
    if plan.cache is not None:
        options["cache"] = Cache(**plan.cache)
    if plan.photo_maker is not None:
        if "pm_id_images_dir" not in plan.folders:
            raise ValueError("--pm-id-embed-path / --pm-style-strength need --pm-id-images-dir")
        images = files_in(plan.folders["pm_id_images_dir"], IMAGE_EXTENSIONS, "--pm-id-images-dir")
        options["photo_maker"] = PhotoMaker(id_images=images, **{k: v for k, v in plan.photo_maker.items()
                                                                  if v is not None})
    if "control_video" in plan.folders:
        options["control_frames"] = files_in(plan.folders["control_video"], IMAGE_EXTENSIONS, "--control-video")
    if args.canny and options.get("control_image") is not None:
        options["control_image"] = preprocess_canny(options["control_image"])
    return options


def _preview_writer(args, plan):
    """A preview callback writing sd-cli's --preview-path, or None without --preview."""
    mode = plan.call.get("preview_mode")
    if mode is None or str(mode).lower() == "none":
        return None
    from ._png import write_png

    path = Path(args.preview_path)
    if _check_output(args.preview_path, flag="--preview-path") != ".png":  # before any model is read
        raise ValueError(f"--preview-path {args.preview_path!r}: sdcpp writes previews as .png")

    def preview(step: int, frames, is_noisy: bool) -> None:
        write_png(path, frames[0], {})

    return preview


def _generate(args) -> int:
    from . import Context

    plan = make_plan(args)
    if plan.mode == "convert":
        return _convert_mode(args, plan)
    if plan.mode == "metadata":
        return _metadata_mode(args)
    suffix = _check_output(args.output, video=plan.mode == "vid_gen", paths=_planned_outputs(args, plan))
    if plan.mode == "upscale":
        return _upscale_mode(args, plan, suffix)
    if not any(plan.context.get(name) for name in COMPONENTS):
        raise ValueError("no model: pass -m/--model or --diffusion-model with its parts")
    preview = _preview_writer(args, plan)
    upscaler = None
    if args.upscale_model:
        upscaler = _upscaler(args, plan)
    options = _call_options(plan, args)
    if preview is not None:
        options["preview"] = preview
    if plan.mode == "vid_gen":
        # generate_video does not report a drawn seed: draw it here, so the frames' metadata can say it.
        options["seed"] = resolve_seed(options.get("seed", VIDEO.defaults["seed"]), 1)
    show = _progress_enabled(args.progress)
    started = time.perf_counter()
    with Context(**_context_options(plan)) as ctx:
        loaded = time.perf_counter()
        if plan.mode == "vid_gen":
            frames = ctx.generate_video(plan.prompt, progress=ProgressBar(show), **options)
            images, seed, values = list(frames), options["seed"], VIDEO.bind(options, "")
        else:
            result = ctx.generate(plan.prompt, progress=ProgressBar(show), **options)
            images, seed, values = list(result), result.seed, IMAGE.bind(options, "")
    done = time.perf_counter()
    if upscaler is not None:
        with upscaler:
            for _ in range(args.upscale_repeats):
                images = [upscaler.upscale(image) for image in images]
    _write_results(args, plan, images, suffix, values, seed)
    print(f"load {loaded - started:.2f} s, generation {done - loaded:.2f} s, seed {seed}")
    return 0


def _one_webp(args, plan, count: int) -> bool:
    """Whether a video of ``count`` frames goes into one animated .webp (else one image a frame)."""
    return (plan.mode == "vid_gen" and Path(args.output).suffix.lower() == ".webp" and count > 1
            and not _PRINTF_INDEX.search(args.output))


def _planned_outputs(args, plan) -> List[Path]:
    """The files the run writes: a batch's images, a video's frames (the frames asked for: the core may make
    fewer, never more) or an animated .webp, an upscaled image."""
    if plan.mode == "upscale":
        count = 1
    elif plan.mode == "vid_gen":
        count = plan.call.get("frames", 1)
        if _one_webp(args, plan, count):
            return [Path(args.output)]
    else:
        count = plan.call.get("batch_count", 1)
    count = count if isinstance(count, int) and count > 0 else 1  # a bad count is the call's to refuse
    return _output_paths(args.output, count, args.output_begin_idx)


def _write_results(args, plan, images, suffix, values, seed) -> None:
    size = (images[0].shape[1], images[0].shape[0])
    if _one_webp(args, plan, len(images)):
        from PIL import Image

        frames = [Image.fromarray(frame) for frame in images]
        frames[0].save(args.output, "WEBP", save_all=True, append_images=frames[1:], duration=1000 / args.fps,
                       loop=0, quality=90)
        print(f"wrote {args.output} ({len(frames)} frames, {args.fps} fps)")
        return
    for index, (path, image) in enumerate(zip(_output_paths(args.output, len(images), args.output_begin_idx),
                                              images)):
        image_seed = seed if plan.mode == "vid_gen" else seed + index
        text = "" if args.disable_image_metadata or plan.prompt is None else _parameters_text(
            plan, values, image_seed, size)
        _write_image(path, suffix, image, text)
        print(f"wrote {path}")


def _upscaler(args, plan):
    """The ESRGAN upscaler with the context options sd-cli builds its upscaler with."""
    from . import Upscaler

    return Upscaler(args.upscale_model, tile_size=args.upscale_tile_size, n_threads=plan.context.get("n_threads"),
                    offload_params_to_cpu=plan.context.get("offload_params_to_cpu", False),
                    direct=plan.context.get("diffusion_conv_direct", False))


def _upscale_mode(args, plan, suffix) -> int:
    from ._images import as_rgb

    if not args.upscale_model:
        raise ValueError("-M upscale needs --upscale-model (an ESRGAN model)")
    if plan.call.get("init_image") is None:
        raise ValueError("-M upscale needs -i/--init-img, the image to upscale")
    image = as_rgb(plan.call["init_image"], "-i/--init-img")
    with _upscaler(args, plan) as upscaler:
        for _ in range(args.upscale_repeats):
            image = upscaler.upscale(image)
    path = _output_paths(args.output, 1, args.output_begin_idx)[0]
    _write_image(path, suffix, image, "")
    print(f"wrote {path} ({image.shape[1]}x{image.shape[0]})")
    return 0


def _convert_mode(args, plan) -> int:
    source = plan.context.get("model") or plan.context.get("diffusion_model")
    if source is None:
        raise ValueError("-M convert needs -m/--model, the file to convert")
    args.src, args.dst = source, args.output
    args.src_flag = "-m/--model" if plan.context.get("model") else "--diffusion-model"
    args.dst_flag = "-o/--output"
    args.weight_type = plan.context.get("weight_type")
    args.tensor_type_rules = plan.context.get("tensor_type_rules")
    args.vae = plan.context.get("vae")
    return _convert(args)


def _metadata_mode(args) -> int:
    if not args.image:
        raise ValueError("-M metadata needs --image, the image to read")
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("-M metadata needs Pillow (pip install pillow)") from None
    path = regular_file("--image", fs_path("--image", args.image))  # a FIFO would block the open

    with Image.open(path) as image:
        entries = {key: value for key, value in image.info.items() if isinstance(value, str)}
        exif = image.getexif().get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
        if isinstance(exif, bytes) and exif.startswith(b"UNICODE\0"):
            entries["parameters"] = exif[8:].decode("utf-16-be", "replace")
        kind = image.format
    if args.metadata_brief:
        entries = {key: value if len(value) <= 200 else value[:200] + "..." for key, value in entries.items()}
    if args.metadata_format == "json":
        print(json.dumps({"path": args.image, "format": kind, "metadata": entries}, ensure_ascii=False))
    else:
        print(f"{args.image}: {kind}")
        for key, value in entries.items():
            print(f"{key}: {value}")
    return 0


def _inspect(args) -> int:
    from . import inspect

    for path in args.files:
        info = inspect(path)
        if args.json:
            print(json.dumps({"path": str(path), "format": info.format, "role": info.role,
                              "architecture": info.architecture, "tensors": info.tensor_count,
                              "parameters": info.parameter_count, "weight_types": info.weight_types,
                              "file_size": info.file_size}))
            continue
        shares = ", ".join(f"{kind} {share:.0%}" for kind, share in info.weight_types.items())
        print(f"{path}: {info.role} ({info.architecture or 'architecture unknown'}), {info.format}, "
              f"{info.tensor_count} tensors, {info.parameter_count / 1e6:.1f}M parameters, "
              f"{info.file_size / 2**20:.1f} MiB; {shares}")
    return 0


def _convert_target(args) -> str:
    """The file convert replaces (a link's target), once it is known to be neither the source nor the VAE and
    to be writable."""
    dst_flag = getattr(args, "dst_flag", "dst")
    dst = fs_path(dst_flag, args.dst)
    for flag, other in ((getattr(args, "src_flag", "src"), args.src), ("--vae", args.vae)):
        if other is None:
            continue
        other = fs_path(flag, other)
        if os.path.realpath(dst) == os.path.realpath(other) or (
                os.path.exists(dst) and os.path.exists(other) and os.path.samefile(dst, other)):
            raise ValueError(f"{dst_flag} {args.dst!r}: is the same file as {flag}; write the converted model "
                             "to another file")
    target = os.path.realpath(dst) if os.path.islink(dst) else dst
    _check_target(Path(target), f"{dst_flag} {args.dst!r}")
    return target


def _convert(args) -> int:
    from . import convert

    target = _convert_target(args)
    # Written under a temporary name beside it and renamed when complete: an interrupted or failed conversion
    # leaves no partial file, nor replaces one already there. The suffix stays: the core picks the format by it.
    folder, name = os.path.split(target)
    stem, suffix = os.path.splitext(name)
    partial = os.path.join(folder, f".{stem}.partial-{os.getpid()}{suffix}")
    started = time.perf_counter()
    try:
        convert(args.src, partial, weight_type=args.weight_type, tensor_type_rules=args.tensor_type_rules or "",
                vae=args.vae, convert_name=getattr(args, "convert_name", False),
                progress=ProgressBar(_progress_enabled(args.progress)))
        os.replace(partial, target)
    except BaseException:
        if os.path.lexists(partial):
            os.remove(partial)
        raise
    before, after = os.path.getsize(args.src), os.path.getsize(target)
    print(f"wrote {args.dst}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


def _split(args) -> int:
    from . import split

    if args.models < 1:  # before the part files are written
        raise ValueError(f"--models {args.models}: must be at least 1")
    types = {}
    for item in args.type or []:
        part, sep, kind = item.partition("=")
        if not sep:
            raise ValueError(f"--type: expected PART=TYPE (e.g. diffusion_model=q8_0), got {item!r}")
        types[part] = kind
    result = split(args.checkpoint, args.out_dir, weight_types=types)
    for part, path in result.parts.items():
        note = " (already there: shared)" if part in result.reused else ""
        print(f"{part}: {path} ({result.part_bytes[part] / 2**20:.1f} MiB){note}")
    print(f"{result.architecture}: {result.bytes_before / 2**20:.1f} MiB -> {result.bytes_after / 2**20:.1f} MiB; "
          f"{args.models} such models sharing these encoders and VAE save "
          f"{result.bytes_saved(args.models) / 2**20:.1f} MiB")
    return 0


def _info(args) -> int:
    from . import __version__, backends, core_commit, core_patches, core_version, system_info

    report = backends()
    print(f"sdcpp-py {__version__}, core {core_version()} ({core_commit()}), patches: "
          f"{', '.join(core_patches()) or 'none'}")
    print(f"built with: {report['built_with']}; default device: {report['default_device'].name}")
    for device in report["devices"]:
        print(f"  {device.name}: {device.description} ({device.type}, {device.backend}, "
              f"{device.memory_total / 2**30:.1f} GiB)")
    print(system_info().strip())
    return 0


def _serve(args) -> int:
    from .server._cli import run

    return run(args)


def _check(args) -> int:
    from .selfcheck import main as selfcheck, out_problem

    problem = out_problem(args.out)  # here too, for sdcpp's one-line error
    if problem:
        raise ValueError(problem)
    return selfcheck(["--out", str(args.out)])


class _Parser(argparse.ArgumentParser):
    """Whole flag names only (sd-cli has no abbreviations), and a usage error is one line, like every other."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"sdcpp: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdcpp", description="stable-diffusion.cpp from the command line "
                     "(sdcpp-py); flags follow sd-cli's.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks and the core's log")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    p = sub.add_parser("inspect", help="role, architecture, sizes and weight types from file headers")
    p.add_argument("files", nargs="+")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p = sub.add_parser("convert", help="convert to GGUF (or safetensors) with the core's converter")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--type", dest="weight_type", help="e.g. q8_0, q4_0, f16; default keeps each tensor's type")
    p.add_argument("--tensor-type-rules", help="pattern=type,... e.g. '^vae\\.=f16'")
    p.add_argument("--vae", help="merge this separate VAE into the output")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto")
    p = sub.add_parser("split", help="an all-in-one SD1/SDXL checkpoint as separate, shareable part files")
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--type", action="append", metavar="PART=TYPE",
                   help="convert a part to GGUF of this weight type, e.g. diffusion_model=q8_0 (repeatable)")
    p.add_argument("--models", type=int, default=1, help="report the saving for this many models sharing the parts")
    sub.add_parser("info", help="version, backend, devices, CPU features")
    p = sub.add_parser("check", help="the install check (synthetic components)")
    p.add_argument("--out", type=Path, default=Path("selfcheck.png"))
    from .server._cli import add_flags as add_serve_flags  # no FastAPI import: only the flags

    add_serve_flags(sub.add_parser("serve", help="serve the model over HTTP: OpenAI Images, A1111 and a job "
                                   "API (pip install 'sdcpp-py[server]')"))
    return parser


class _ColourLevels:
    """sd-cli's --color: the level name coloured (ANSI) in each log line."""

    COLOURS = {"DEBUG": "36", "INFO": "32", "WARNING": "33", "ERROR": "31", "CRITICAL": "31"}

    def __init__(self, formatter):
        self.formatter = formatter

    def format(self, record) -> str:
        line = self.formatter.format(record)
        colour = self.COLOURS.get(record.levelname)
        return line.replace(record.levelname, f"\033[{colour}m{record.levelname}\033[0m", 1) if colour else line


def _sd_cli_argv(argv: List[str]) -> List[str]:
    """``sdcpp`` followed by sd-cli's flags (a pasted sd-cli command) is ``sdcpp generate``."""
    first = next((i for i, arg in enumerate(argv) if arg != "--debug"), None)
    if first is not None and argv[first].startswith("-") and argv[first] not in ("-h", "--help"):
        return [*argv[:first], "generate", *argv[first:]]
    return argv


def main(argv: Optional[List[str]] = None) -> int:
    argv = _sd_cli_argv(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    # The core's warnings always (a size aligned up, a file it skips: sd-cli shows them); its info with -v.
    verbose = args.debug or getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    if getattr(args, "color", False):
        for handler in logging.getLogger().handlers:
            handler.setFormatter(_ColourLevels(handler.formatter))
    handler = {"generate": _generate, "inspect": _inspect, "convert": _convert, "split": _split, "info": _info,
               "check": _check, "serve": _serve}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("sdcpp: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as error:
        if args.debug:
            raise
        print(f"sdcpp: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # SdcppError: the core failed
        if args.debug:
            raise
        print(f"sdcpp: error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

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
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

COMPONENT_FLAGS = {  # sd-cli spelling -> Context argument
    "--model": "model", "--diffusion-model": "diffusion_model", "--high-noise-diffusion-model":
    "high_noise_diffusion_model", "--clip_l": "clip_l", "--clip_g": "clip_g", "--clip_vision": "clip_vision",
    "--t5xxl": "t5xxl", "--llm": "llm", "--llm_vision": "llm_vision", "--vae": "vae", "--taesd": "taesd",
    "--control-net": "control_net", "--photo-maker": "photo_maker",
}


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
    p = sub.add_parser("generate", help="txt2img / img2img / inpaint / edit (sd-cli's flags)")
    for flag, name in COMPONENT_FLAGS.items():
        aliases = [flag, "-m"] if name == "model" else [flag]
        p.add_argument(*aliases, dest=name, metavar="PATH")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-n", "--negative-prompt", default="")
    p.add_argument("-o", "--output", default="output.png",
                   help=f"image path ({', '.join(OUTPUT_EXTENSIONS)}; all but .png need Pillow); "
                   "a batch writes NAME_i.EXT")
    p.add_argument("-W", "--width", type=int)
    p.add_argument("-H", "--height", type=int)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--guidance", type=float, default=3.5)
    p.add_argument("--sampling-method", dest="sampler")
    p.add_argument("--scheduler")
    p.add_argument("-s", "--seed", type=int, default=42)
    p.add_argument("-b", "--batch-count", type=int, default=1)
    p.add_argument("--clip-skip", type=int, default=-1)
    p.add_argument("--eta", type=float)
    p.add_argument("--flow-shift", type=float)
    p.add_argument("-i", "--init-img", dest="init_image")
    p.add_argument("--mask")
    p.add_argument("--strength", type=float, default=0.75)
    p.add_argument("-r", "--ref-image", dest="ref_images", action="append")
    p.add_argument("--control-image")
    p.add_argument("--control-strength", type=float, default=0.9)
    p.add_argument("--canny", action="store_true", help="apply the Canny preprocessor to the control image")
    p.add_argument("--lora-model-dir", dest="lora_dir")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:MULTIPLIER]")
    p.add_argument("--hires", action="store_true")
    p.add_argument("--hires-upscaler", default="Latent")
    p.add_argument("--hires-scale", type=float, default=2.0)
    p.add_argument("--hires-steps", type=int, default=0)
    p.add_argument("--hires-denoising-strength", type=float, default=0.7)
    p.add_argument("--cache-mode")
    p.add_argument("--vae-tiling", action="store_true")
    p.add_argument("-t", "--threads", type=int)
    p.add_argument("--type", dest="weight_type", help="weight type at load, e.g. q8_0")
    p.add_argument("--diffusion-fa", dest="diffusion_flash_attn", action="store_true")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto")


def _lora_arg(text: str):
    from . import Lora

    path, _, multiplier = text.rpartition(":") if ":" in text and not os.path.exists(text) else (text, "", "")
    try:
        return Lora(path or text, float(multiplier) if multiplier else 1.0)
    except ValueError:
        raise ValueError(f"--lora {text!r}: expected PATH or PATH:MULTIPLIER") from None


def _parameters_text(args, seed: int) -> str:
    """The generation parameters in the de-facto "parameters" PNG text format."""
    fields = [f"Steps: {args.steps}", f"CFG scale: {args.cfg_scale}", f"Seed: {seed}",
              f"Size: {args.width}x{args.height}", f"Sampler: {args.sampler or 'default'}",
              f"Scheduler: {args.scheduler or 'default'}", f"Guidance: {args.guidance}"]
    models = ", ".join(f"{name}: {os.path.basename(getattr(args, name))}" for name in COMPONENT_FLAGS.values()
                       if getattr(args, name))
    text = args.prompt + (f"\nNegative prompt: {args.negative_prompt}" if args.negative_prompt else "")
    return f"{text}\n{', '.join(fields)}, Models: {models}, Generator: sdcpp-py"


def _check_output(output: str) -> str:
    """The output path's extension, once it is known the image can be written there: checked before any model is
    read, so a typo does not cost a load and a generation."""
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_EXTENSIONS:
        raise ValueError(f"-o/--output {output!r}: unsupported extension {path.suffix or '(none)'!r}; "
                         f"use one of {', '.join(OUTPUT_EXTENSIONS)}")
    if suffix in PILLOW_FORMATS:
        try:
            import PIL.Image  # noqa: F401
        except ImportError:
            raise ValueError(f"-o/--output {output!r}: writing {suffix} needs Pillow (pip install pillow), "
                             "or write .png") from None
    folder = path.parent
    if not folder.exists():
        raise ValueError(f"-o/--output {output!r}: folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise ValueError(f"-o/--output {output!r}: {str(folder)!r} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"-o/--output {output!r}: folder {str(folder)!r} is not writable")
    if path.is_dir():
        raise ValueError(f"-o/--output {output!r}: is a folder; give a file name")
    if path.exists() and not path.is_file():  # writing to a FIFO would block until a reader comes
        raise ValueError(f"-o/--output {output!r}: exists and is not a regular file")
    return suffix


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


def _generate(args) -> int:
    from . import Cache, Context, Hires, preprocess_canny

    suffix = _check_output(args.output)
    components = {name: getattr(args, name) for name in COMPONENT_FLAGS.values() if getattr(args, name)}
    if not components:
        raise ValueError("no model: pass -m/--model or --diffusion-model with its parts")
    context_options = dict(n_threads=args.threads, weight_type=args.weight_type, lora_dir=args.lora_dir,
                           diffusion_flash_attn=args.diffusion_flash_attn)
    options = dict(negative_prompt=args.negative_prompt, steps=args.steps, cfg_scale=args.cfg_scale,
                   guidance=args.guidance, sampler=args.sampler, scheduler=args.scheduler, seed=args.seed,
                   batch_count=args.batch_count, clip_skip=args.clip_skip, eta=args.eta, flow_shift=args.flow_shift,
                   width=args.width, height=args.height, vae_tiling=args.vae_tiling,
                   loras=[_lora_arg(text) for text in args.lora] or None)
    if args.init_image:
        options.update(init_image=args.init_image, strength=args.strength)
    if args.mask:
        options["mask"] = args.mask
    if args.ref_images:
        options["ref_images"] = args.ref_images
    if args.control_image:
        control = preprocess_canny(args.control_image) if args.canny else args.control_image
        options.update(control_image=control, control_strength=args.control_strength)
    if args.hires:
        options["hires"] = Hires(upscaler=args.hires_upscaler, scale=args.hires_scale, steps=args.hires_steps,
                                 denoising_strength=args.hires_denoising_strength)
    if args.cache_mode:
        options["cache"] = Cache(args.cache_mode)
    show = _progress_enabled(args.progress)
    started = time.perf_counter()
    with Context(**components, **context_options) as ctx:
        loaded = time.perf_counter()
        images = ctx.generate(args.prompt, progress=ProgressBar(show), **options)
    done = time.perf_counter()
    args.width, args.height = images[0].shape[1], images[0].shape[0]
    output = Path(args.output)
    for index, image in enumerate(images):
        path = output if len(images) == 1 else output.with_name(f"{output.stem}_{index}{output.suffix}")
        _write_image(path, suffix, image, _parameters_text(args, images.seed + index))
        print(f"wrote {path}")
    print(f"load {loaded - started:.2f} s, generation {done - loaded:.2f} s, seed {images.seed}")
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


def _convert(args) -> int:
    from . import convert

    started = time.perf_counter()
    convert(args.src, args.dst, weight_type=args.weight_type, tensor_type_rules=args.tensor_type_rules or "",
            vae=args.vae, progress=ProgressBar(_progress_enabled(args.progress)))
    before, after = os.path.getsize(args.src), os.path.getsize(args.dst)
    print(f"wrote {args.dst}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB "
          f"in {time.perf_counter() - started:.1f} s")
    return 0


def _split(args) -> int:
    from . import split

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


def _check(args) -> int:
    from .selfcheck import main as selfcheck

    return selfcheck(["--out", str(args.out)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdcpp", description="stable-diffusion.cpp from the command line "
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
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    handler = {"generate": _generate, "inspect": _inspect, "convert": _convert, "split": _split, "info": _info,
               "check": _check}[args.command]
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

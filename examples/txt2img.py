#!/usr/bin/env python3
"""Text to image with separately downloaded components.

    python examples/txt2img.py --diffusion-model flux1-schnell-q4_0.gguf --clip-l clip_l.safetensors \
        --t5xxl t5xxl_q8_0.gguf --vae ae.safetensors -p "a lighthouse at dusk" --steps 4 -o lighthouse.png
"""

import argparse
import logging
import math
from pathlib import Path

import sdcpp_py

OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # what Pillow writes from an RGB image


def _at_least_1(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def _output_paths(output: Path, count: int) -> list:
    """NAME_i.EXT for each image of a batch (the suffix kept, whatever its case); the name itself for one."""
    return [output] if count == 1 else [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", help="all-in-one checkpoint (SD1/SD2/SDXL)")
    for component in ("diffusion-model", "clip-l", "clip-g", "t5xxl", "llm", "vae", "taesd"):
        parser.add_argument(f"--{component}")
    parser.add_argument("-p", "--prompt", required=True)
    parser.add_argument("-n", "--negative-prompt", default="")
    parser.add_argument("-W", "--width", type=_at_least_1, default=512)
    parser.add_argument("-H", "--height", type=_at_least_1, default=512)
    parser.add_argument("--steps", type=_at_least_1, default=20)
    parser.add_argument("--cfg-scale", type=_finite, default=7.0)
    parser.add_argument("--sampling-method", default=None)
    parser.add_argument("-s", "--seed", type=int, default=42)
    parser.add_argument("-b", "--batch-count", type=_at_least_1, default=1)
    parser.add_argument("-o", "--output", type=Path, default=Path("output.png"),
                        help=f"{', '.join(OUTPUT_SUFFIXES)}; a batch writes NAME_0.EXT, NAME_1.EXT, ...")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    # Checked before the model loads: a typo should not cost a generation.
    if args.output.suffix.lower() not in OUTPUT_SUFFIXES:
        parser.error(f"-o/--output {str(args.output)!r}: use one of {', '.join(OUTPUT_SUFFIXES)}")
    if not args.output.parent.is_dir():
        parser.error(f"-o/--output {str(args.output)!r}: folder {str(args.output.parent)!r} does not exist")
    for path in _output_paths(args.output, args.batch_count):
        if path.is_dir():
            parser.error(f"-o/--output: {str(path)!r} is a folder")
    if not any(getattr(args, name) for name in ("model", "diffusion_model")):
        parser.error("give -m/--model or --diffusion-model (with its parts)")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

    from PIL import Image

    components = {name: getattr(args, name) for name in
                  ("model", "diffusion_model", "clip_l", "clip_g", "t5xxl", "llm", "vae", "taesd")
                  if getattr(args, name)}

    def progress(step: int, steps: int, seconds: float) -> None:
        print(f"\rstep {step}/{steps} ({seconds:.2f} s/step)", end="\n" if step == steps else "", flush=True)

    with sdcpp_py.Context(**components) as ctx:
        images = ctx.txt2img(args.prompt, negative_prompt=args.negative_prompt, width=args.width,
                             height=args.height, steps=args.steps, cfg_scale=args.cfg_scale,
                             sampler=args.sampling_method, seed=args.seed, batch_count=args.batch_count,
                             progress=progress)
    for index, (path, image) in enumerate(zip(_output_paths(args.output, len(images)), images)):
        Image.fromarray(image).save(path)
        print(f"saved {path} (seed {images.seed + index})")


if __name__ == "__main__":
    main()

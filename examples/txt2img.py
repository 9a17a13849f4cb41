#!/usr/bin/env python3
"""Text to image with separately downloaded components.

    python examples/txt2img.py --diffusion-model flux1-schnell-q4_0.gguf --clip-l clip_l.safetensors \
        --t5xxl t5xxl_q8_0.gguf --vae ae.safetensors -p "a lighthouse at dusk" --steps 4 -o lighthouse.png
"""

import argparse
import logging

import sdcpp_py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", help="all-in-one checkpoint (SD1/SD2/SDXL)")
    for component in ("diffusion-model", "clip-l", "clip-g", "t5xxl", "llm", "vae", "taesd"):
        parser.add_argument(f"--{component}")
    parser.add_argument("-p", "--prompt", required=True)
    parser.add_argument("-n", "--negative-prompt", default="")
    parser.add_argument("-W", "--width", type=int, default=512)
    parser.add_argument("-H", "--height", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg-scale", type=float, default=7.0)
    parser.add_argument("--sampling-method", default=None)
    parser.add_argument("-s", "--seed", type=int, default=42)
    parser.add_argument("-b", "--batch-count", type=int, default=1)
    parser.add_argument("-o", "--output", default="output.png")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
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
    for index, image in enumerate(images):
        path = args.output if len(images) == 1 else args.output.replace(".png", f"_{index}.png")
        Image.fromarray(image).save(path)
        print(f"saved {path} (seed {images.seed + index})")


if __name__ == "__main__":
    main()

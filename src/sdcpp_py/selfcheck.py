"""Install check: generate one image on the project's synthetic components (no real weights needed).

    python -m sdcpp_py.selfcheck [--out selfcheck.png]

The components are random-weight stand-ins with the right tensor names and shapes (see
sdcpp_py.testing.flux1, shipped for this check), so the image is structured noise: this proves the build,
loading of separate component files and generation work, not image quality.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import BACKEND, Context, core_version
from ._png import write_png
from .testing.flux1 import flux_components


def out_problem(out: Path) -> str | None:
    """Why the PNG cannot be written at ``out`` (None if it can): known before anything is generated."""
    from .cli import _check_target

    where = f"--out {str(out)!r}"
    if out.suffix.lower() != ".png":
        return f"{where}: the check writes a PNG; give a .png name"
    try:
        _check_target(out, where)  # the checks of sdcpp's output paths
    except ValueError as error:
        return str(error)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("selfcheck.png"))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "sdcpp-py" / "synthetic" / "flux")
    args = parser.parse_args(argv)
    problem = out_problem(args.out)
    if problem:
        print(f"selfcheck: error: {problem}", file=sys.stderr)
        return 2

    print(f"sdcpp-py INSTALL CHECK (synthetic random-weight components, not a real model); "
          f"core {core_version()}, backend {BACKEND}")
    parts = flux_components(args.cache)
    started = time.perf_counter()
    with Context(**parts) as ctx:
        loaded = time.perf_counter()
        images = ctx.txt2img("a lighthouse at dusk", width=128, height=128, steps=4, cfg_scale=1.0, seed=7)
    done = time.perf_counter()
    image = images[0]
    if image.shape != (128, 128, 3) or image.dtype != np.uint8 or image.std() < 1.0:
        print(f"FAILED: unexpected image {image.shape} {image.dtype} std={image.std():.2f}", file=sys.stderr)
        return 1
    write_png(args.out, image)
    print(f"OK: Flux.1 from 3 separate files ({', '.join(parts)}), load {loaded - started:.2f} s, "
          f"4 steps at 128x128 in {done - loaded:.2f} s -> {args.out} (noise, by design)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One sdcpp-py txt2img job in this process: build a Context, generate, save the pixels; one JSON line of
figures (load_s, gen_s, rss_mib) on stdout.

    python benchmarks/runners/sdcpp_txt2img.py '{"components": {...}, "context": {...}, "prompt": ..., "size": ...,
        "steps": ..., "cfg": ..., "seed": ..., "sampler": ..., "load_only": false, "core_log": true, "out": ...}'

``context`` holds the Context keywords (``vae_decode_only=True`` is always added); ``core_log`` sends the
core's log to stderr (compare.py reads its "generate_image completed" time there); ``out`` is a .npy path.
"""

import json
import logging
import resource
import sys
import time


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    job = json.loads(sys.argv[1])
    if job.get("core_log"):
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    import numpy as np

    import sdcpp_py

    start = time.perf_counter()
    ctx = sdcpp_py.Context(**job["components"], vae_decode_only=True, **job["context"])
    loaded = time.perf_counter()
    if job.get("load_only"):
        print(json.dumps({"load_s": loaded - start, "gen_s": float("nan"), "rss_mib": peak_rss_mib()}))
        return 0
    image = ctx.txt2img(job["prompt"], width=job["size"], height=job["size"], steps=job["steps"],
                        cfg_scale=job["cfg"], seed=job["seed"], sampler=job["sampler"])[0]
    pixels = np.asarray(image)
    done = time.perf_counter()
    np.save(job["out"], pixels)
    print(json.dumps({"load_s": loaded - start, "gen_s": done - loaded, "rss_mib": peak_rss_mib()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

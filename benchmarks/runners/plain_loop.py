"""The baseline of benchmarks/serve.py: one process, one Context, the requests one after another through
``Context.txt2img``; one JSON line (load_s, wall_s, seconds per request, sha256 of each image's pixels, rss_mib).

    python benchmarks/runners/plain_loop.py '{"components": {...}, "n_threads": 2, "prompt": ..., "size": 256,
        "steps": 4, "cfg": 1.0, "seeds": [1, 2, ...]}'
"""

import hashlib
import json
import resource
import sys
import time


def main() -> int:
    job = json.loads(sys.argv[1])
    import numpy as np

    import sdcpp_py

    start = time.perf_counter()
    ctx = sdcpp_py.Context(**job["components"], n_threads=job["n_threads"])
    loaded = time.perf_counter()
    seconds, hashes = [], []
    for seed in job["seeds"]:
        began = time.perf_counter()
        image = ctx.txt2img(job["prompt"], width=job["size"], height=job["size"], steps=job["steps"],
                            cfg_scale=job["cfg"], seed=seed)[0]
        seconds.append(time.perf_counter() - began)
        hashes.append(hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest())
    wall = time.perf_counter() - loaded
    ctx.close()
    print(json.dumps({"load_s": loaded - start, "wall_s": wall, "seconds": seconds, "sha256": hashes,
                      "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

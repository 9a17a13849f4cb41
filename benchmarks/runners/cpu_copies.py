"""One measurement for cpu_kernels.py: patch 0020's copies (a transformer's permutes in and out, a skip
connection's concatenation) on an SD1 step's shapes, timed through the test hooks; one JSON line on stdout.
SDCPP_PY_CPU_COPIES=ggml in the environment times ggml's own loops instead (read once by the build).

    python benchmarks/runners/cpu_copies.py '{"size": 256, "threads": 2, "repeats": 5}'
"""

import json
import statistics
import sys

import numpy as np


def main() -> int:
    job = json.loads(sys.argv[1])
    from sdcpp_py import _test_hooks as hooks

    if not hasattr(hooks, "_cpu_permuted_copy"):
        print(json.dumps([]))
        return 0
    threads, side = job["threads"], job["size"] // 8
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 320, side, side), dtype=np.float32)
    tokens = rng.standard_normal((2, side * side, 320), dtype=np.float32)
    cases = [
        ("permute NCHW -> NHWC, 320 channels", image.nbytes,
         lambda: hooks._cpu_permuted_copy(image, [0, 2, 3, 1], threads)),
        ("permute tokens -> channels, 320 channels", tokens.nbytes,
         lambda: hooks._cpu_permuted_copy(tokens, [0, 2, 1], threads)),
        ("concat 320 + 320 channels", 2 * image.nbytes, lambda: hooks._cpu_concat(image, image, 1, threads)),
    ]
    rows = []
    for name, nbytes, call in cases:
        call()  # warm-up
        seconds = []
        for _ in range(job["repeats"]):
            call()
            seconds.append(hooks._last_compute_seconds())  # the compute alone, not the graph's set-up
        rows.append({"copy": f"{name}, {side}x{side}, batch 2", "bytes": 2 * nbytes,  # read and written
                     "seconds": statistics.median(seconds)})
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

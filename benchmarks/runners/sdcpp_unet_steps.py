"""One sdcpp-py measurement for vs_diffusers.py: txt2img on the synthetic SD1 checkpoint, each sampling step
timed from the progress callbacks (step 1 is the warm-up); one JSON line of figures on stdout.

    python benchmarks/runners/sdcpp_unet_steps.py '{"size": 256, "threads": 2, "steps": 2, "prompt": "...",
        "model_dir": "...", "options": {}, "image_out": "/tmp/image.npy"}'   (image_out: optional)
"""

import json
import logging
import resource
import sys
import time
from pathlib import Path


def main() -> int:
    job = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    import sdcpp_py
    from sdcpp_py.testing import sd
    path = sd.sd1_checkpoint(Path(job["model_dir"]))
    events = []

    def progress(step, steps, seconds):
        events.append((time.perf_counter(), step, steps, seconds))

    start = time.perf_counter()
    ctx = sdcpp_py.Context(model=str(path), n_threads=job["threads"], vae_decode_only=True, **job["options"])
    loaded = time.perf_counter()
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    image = ctx.txt2img(job["prompt"], width=job["size"], height=job["size"], steps=job["steps"], cfg_scale=7.0,
                        seed=7, sampler="euler", progress=progress)[0]
    done = time.perf_counter()
    if job.get("image_out"):  # for vs_diffusers' PSNR against the f32 image
        import numpy as np
        np.save(job["image_out"], image)
    steps = job["steps"]
    stamps = {}
    for stamp, step, total, seconds in events:
        # Only the sampling loop's callbacks (a tiled VAE decode would report with its own count); first wins.
        if total == steps and abs(step) not in stamps:
            stamps[abs(step)] = (stamp, seconds)
    missing = [k for k in range(steps + 1) if k not in stamps]
    if missing:
        raise SystemExit(f"no progress callback for steps {missing}: {events}")
    gaps = [stamps[k][0] - stamps[k - 1][0] for k in range(1, steps + 1)]
    print(json.dumps({
        "step_times": gaps[1:], "warmup_s": gaps[0], "load_s": loaded - start, "rss_model_mib": rss_loaded,
        "gen_s": done - loaded, "pre_sampling_s": stamps[0][0] - loaded, "post_sampling_s": done - stamps[steps][0],
        "core_avg_s_per_step": stamps[steps][1], "image_shape": list(image.shape),
        "sdcpp_py": getattr(sdcpp_py, "__version__", None), "architecture": ctx.architecture,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One stable-diffusion-cpp-python (the peer) txt2img job, run by the peer's own venv: the same job and JSON
figures as sdcpp_txt2img.py (compare.py's keys: components, threads, diffusion_fa, load_only, ...)."""

import json
import resource
import sys
import time

# Our component slots as the peer's keyword names.
PEER_NAMES = {"model": "model_path", "diffusion_model": "diffusion_model_path", "clip_l": "clip_l_path",
              "t5xxl": "t5xxl_path", "vae": "vae_path"}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    job = json.loads(sys.argv[1])
    import numpy as np
    from stable_diffusion_cpp import StableDiffusion

    start = time.perf_counter()
    sd = StableDiffusion(**{PEER_NAMES[k]: v for k, v in job["components"].items()}, n_threads=job["threads"],
                         vae_decode_only=True, diffusion_flash_attn=job["diffusion_fa"], verbose=True)
    loaded = time.perf_counter()
    if job["load_only"]:
        print(json.dumps({"load_s": loaded - start, "gen_s": float("nan"), "rss_mib": peak_rss_mib()}))
        return 0
    image = sd.generate_image(prompt=job["prompt"], width=job["size"], height=job["size"], sample_steps=job["steps"],
                              cfg_scale=job["cfg"], seed=job["seed"], sample_method=job["sampler"])[0]
    pixels = np.asarray(image.convert("RGB"))
    done = time.perf_counter()
    np.save(job["out"], pixels)
    print(json.dumps({"load_s": loaded - start, "gen_s": done - loaded, "rss_mib": peak_rss_mib()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

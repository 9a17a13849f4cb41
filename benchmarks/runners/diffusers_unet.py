"""One diffusers measurement for vs_diffusers.py, run by the peers' venv: the SD1.5 UNet (random init,
float32, or bfloat16 with "dtype": "bfloat16") timed over classifier-free-guidance steps (batch-2 forwards);
one JSON line of figures on stdout.

    python benchmarks/runners/diffusers_unet.py '{"size": 256, "threads": 2, "repeats": 3, "dtype": "float32"}'

The UNet is built by ``sd15_unet()``, which runners/openvino_unet.py imports too (same weights for both).
"""

import json
import resource
import sys
import time


def sd15_unet(size: int, dtype):
    """The SD1.5 UNet (random init from seed 0) in ``dtype`` and a CFG step's inputs at ``size``."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8,
    ).to(dtype).eval()
    side = size // 8
    inputs = (torch.randn(2, 4, side, side).to(dtype), torch.tensor(981), torch.randn(2, 77, 768).to(dtype))
    return unet, inputs


def main() -> int:
    job = json.loads(sys.argv[1])
    import torch

    torch.set_num_threads(job["threads"])
    import diffusers

    start = time.perf_counter()
    unet, (latents, timestep, states) = sd15_unet(job["size"], getattr(torch, job.get("dtype", "float32")))
    built = time.perf_counter()
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        unet(latents, timestep, encoder_hidden_states=states).sample
        warmup = time.perf_counter() - t0
        for _ in range(job["repeats"]):
            t0 = time.perf_counter()
            out = unet(latents, timestep, encoder_hidden_states=states).sample
            times.append(time.perf_counter() - t0)
    assert out.shape == latents.shape and bool(torch.isfinite(out).all())
    print(json.dumps({
        "step_times": times, "warmup_s": warmup, "load_s": built - start, "rss_model_mib": rss_model,
        "params_m": sum(p.numel() for p in unet.parameters()) / 1e6, "threads_used": torch.get_num_threads(),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "attn_processor": type(next(iter(unet.attn_processors.values()))).__name__,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

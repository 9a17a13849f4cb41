"""One OpenVINO measurement for vs_diffusers.py, run by the peers' venv: the same SD1.5 UNet as
runners/diffusers_unet.py (``sd15_unet``), converted by ``openvino.convert_model`` and compiled for the CPU
with the given inference precision ("f32", or "default": OpenVINO's choice for this CPU, bf16 where the CPU
has it), timed over classifier-free-guidance steps (batch-2 inferences); one JSON line of figures on stdout.

    python benchmarks/runners/openvino_unet.py '{"size": 256, "threads": 2, "repeats": 3, "precision": "f32"}'
"""

import json
import resource
import sys
import time
from pathlib import Path


def main() -> int:
    job = json.loads(sys.argv[1])
    import openvino as ov
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling runner's model builder
    from diffusers_unet import sd15_unet

    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    unet, inputs = sd15_unet(job["size"], torch.float32)

    class Forward(torch.nn.Module):  # the UNet's tensor output only, as convert_model traces it
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, latents, timestep, states):
            return self.unet(latents, timestep, encoder_hidden_states=states).sample

    with torch.no_grad():
        model = ov.convert_model(Forward(unet), example_input=inputs)
    del unet
    config = {"INFERENCE_NUM_THREADS": job["threads"], "PERFORMANCE_HINT": "LATENCY"}
    if job["precision"] != "default":
        config["INFERENCE_PRECISION_HINT"] = job["precision"]
    compiled = ov.Core().compile_model(model, "CPU", config)
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    built = time.perf_counter()
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    request = compiled.create_infer_request()
    feed = [tensor.numpy() for tensor in inputs]
    times = []
    t0 = time.perf_counter()
    request.infer(feed)
    warmup = time.perf_counter() - t0
    for _ in range(job["repeats"]):
        t0 = time.perf_counter()
        out = request.infer(feed)[0]
        times.append(time.perf_counter() - t0)
    assert out.shape == feed[0].shape
    print(json.dumps({"step_times": times, "warmup_s": warmup, "load_s": built - start, "rss_model_mib": rss_model,
                      "openvino": ov.__version__, "inference_precision": precision}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

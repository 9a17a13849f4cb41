"""Synthetic model components for running the stable-diffusion.cpp core offline (tests, benchmarks, the
install check).

The files have the tensor names and shapes the core expects (the vendored sources: src/model.cpp version
detection, flux.hpp, clip.hpp, t5.hpp, unet.hpp, auto_encoder_kl.hpp, tae.hpp, wan.hpp, ...) and seeded random
weights. The images are noise, but finite and not constant, which is all a test of the plumbing needs.

Files stay small on disk: sizes the core reads from the weights are made tiny, and fixed-size parts alias
every weight into one shared pool that is random only in its head, its zero tail a file hole (CLIP-L 76 MB,
T5-XXL 263 MB, umt5-xxl 2.1 GB apparent, a few MB used). Aliased files are for the core only: the Python
``safetensors`` package refuses overlapping ranges ("invalid offset"). GGUF files cannot alias (ggml's parser
requires contiguous, aligned offsets). Built files are cached by a hash of their parameters.

Modules, one per family (import the one you need; this package imports none of them):

- ``flux1``: Flux.1 (``flux_components``). Shipped in release wheels, with ``_tensors`` and ``_encoders``:
  the install check (``python -m sdcpp_py.selfcheck``) builds it.
- ``flux2``: Flux.2 klein (``flux2_components``).
- ``sd``: SD1.x / SDXL checkpoints and the SD1 ControlNet (``sd1_checkpoint``, ``sdxl_checkpoint``,
  ``sd1_controlnet``).
- ``video``: Wan 2.1 (``wan_components``).
- ``extras``: TAESD, ESRGAN, PhotoMaker v1 and a Flux.1 LoRA (``taesd``, ``esrgan_upscaler``,
  ``photomaker_v1``, ``flux_lora``).
- ``_tensors`` (weight specs, seeded values, the cache) and ``_encoders`` (CLIP-L, T5-XXL, the KL VAE, CLIP
  vision: parts several families use).

Only the modules in ``RELEASE_MODULES`` are in release wheels; the others come with source builds. The file
writers are ``sdcpp_py._formats.write_safetensors`` and ``write_gguf``.
"""

RELEASE_MODULES = ("__init__", "_tensors", "_encoders", "flux1")

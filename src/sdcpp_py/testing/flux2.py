"""Flux.2 klein parts: a tiny Flux.2 DiT, a tiny Qwen3 text encoder (``llm=``) and the Flux.2 VAE.

Besides the DiT's sizes (as for Flux.1), the Qwen3 encoder's depth and widths are made tiny (llm.hpp); the
DiT's text width follows from them.
"""

from __future__ import annotations

import os
import pathlib

from ._encoders import kl_vae
from ._tensors import Spec, build_component, cached_path


_QWEN3_VOCAB = 151936  # Qwen3's embedding rows; the core's Qwen2Tokenizer ids go up to 151668
_KLEIN_LLM_LAYERS = (9, 18, 27)  # conditioner.hpp: klein concatenates these layers' outputs (1-based)


def _flux2_dit(s: Spec, depth: int, depth_single: int, hidden: int, context_dim: int, guidance: bool) -> None:
    """BFL Flux.2 names (flux.hpp, FluxRunner for sd_version_is_flux2): no biases at all, one shared
    modulation per stream (``double_stream_modulation_img`` marks the file as Flux.2), SiLU-gated MLPs of
    ratio 3, a 128-channel latent (32 VAE channels in 2x2 patches, DiT patch size 1), head dim 128 (the
    rope axes are 4 x 32).  Fewer than 48 single blocks makes it "klein" (model.cpp), whose text encoder
    is Qwen3; the DiT's text width ``context_dim`` is read from ``txt_in.weight``."""
    h, mlp, head_dim, latent = hidden, 3 * hidden, 128, 128
    s.linear("img_in", latent, h, bias=False)
    s.linear("txt_in", context_dim, h, bias=False)  # context_in_dim and hidden_size are read from this
    s.linear("time_in.in_layer", 256, h, bias=False)
    s.linear("time_in.out_layer", h, h, bias=False)
    if guidance:  # presence switches guidance_embed on (Flux.2 dev style); klein has none
        s.linear("guidance_in.in_layer", 256, h, bias=False)
        s.linear("guidance_in.out_layer", h, h, bias=False)
    s.linear("double_stream_modulation_img.lin", h, 6 * h, bias=False)
    s.linear("double_stream_modulation_txt.lin", h, 6 * h, bias=False)
    s.linear("single_stream_modulation.lin", h, 3 * h, bias=False)
    for i in range(depth):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}_"
            s.linear(p + "attn.qkv", h, 3 * h, bias=False)
            s.add(p + "attn.norm.query_norm.scale", (head_dim,), "one")
            s.add(p + "attn.norm.key_norm.scale", (head_dim,), "one")  # head dim read here
            s.linear(p + "attn.proj", h, h, bias=False)
            s.linear(p + "mlp.0", h, 2 * mlp, bias=False)  # gate and value
            s.linear(p + "mlp.2", mlp, h, bias=False)
    for i in range(depth_single):
        p = f"single_blocks.{i}."
        s.linear(p + "linear1", h, 3 * h + 2 * mlp, bias=False)
        s.linear(p + "linear2", h + mlp, h, bias=False)
        s.add(p + "norm.query_norm.scale", (head_dim,), "one")
        s.add(p + "norm.key_norm.scale", (head_dim,), "one")
    s.linear("final_layer.linear", h, latent, bias=False)
    s.linear("final_layer.adaLN_modulation.1", h, 2 * h, bias=False)


def _qwen3(s: Spec, layers: int, hidden: int, intermediate: int) -> None:
    """Qwen3 causal-LM text tower, HF names (llm.hpp, LLMRunner arch QWEN3).  The core reads the depth,
    ``hidden`` and the vocabulary (from ``embed_tokens``) and ``intermediate`` (from ``gate_proj``); the
    attention is fixed: 32 query and 8 KV heads of dim 128, RMS q/k norms, no biases."""
    heads, kv_heads, head_dim = 32, 8, 128
    s.add("model.embed_tokens.weight", (_QWEN3_VOCAB, hidden))
    for i in range(layers):
        p = f"model.layers.{i}."
        s.linear(p + "self_attn.q_proj", hidden, heads * head_dim, bias=False)
        s.linear(p + "self_attn.k_proj", hidden, kv_heads * head_dim, bias=False)
        s.linear(p + "self_attn.v_proj", hidden, kv_heads * head_dim, bias=False)
        s.linear(p + "self_attn.o_proj", heads * head_dim, hidden, bias=False)
        s.norm(p + "self_attn.q_norm", head_dim, bias=False)
        s.norm(p + "self_attn.k_norm", head_dim, bias=False)
        s.linear(p + "mlp.gate_proj", hidden, intermediate, bias=False)
        s.linear(p + "mlp.up_proj", hidden, intermediate, bias=False)
        s.linear(p + "mlp.down_proj", intermediate, hidden, bias=False)
        s.norm(p + "input_layernorm", hidden, bias=False)
        s.norm(p + "post_attention_layernorm", hidden, bias=False)
    s.norm("model.norm", hidden, bias=False)


def flux2_components(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    depth: int = 1,
    depth_single_blocks: int = 1,
    hidden_size: int = 128,
    guidance_embed: bool = False,
    llm_layers: int = 1,
    llm_hidden_size: int = 64,
    llm_intermediate_size: int = 128,
    vae_ch: int = 32,
    vae_encoder: bool = True,
) -> dict[str, pathlib.Path]:
    """Synthetic Flux.2 klein component files, keyed by Context argument name (sd-cli:
    ``--diffusion-model --llm --vae``).

    - "diffusion_model": tiny Flux.2 DiT (hidden_size a multiple of 128, head dim 128; under 48 single
      blocks, so the core takes it for klein; ~2 MB at the defaults).  Its text width is
      ``llm_hidden_size`` times the number of the Qwen3 layers 9, 18 and 27 that exist, or once when
      none does (64 at the defaults, 192 with ``llm_layers=27``).
    - "llm": tiny Qwen3 text encoder, aliased/sparse on disk (19.6 MB apparent, ~8 MB used, whatever the
      depth; in RAM ~18.5 MB plus ~1.3 MB per layer).  The Qwen tokenizer's 151936-row embedding is kept
      (only its first ~65k rows are random: special tokens embed as zeros); the attention is fixed
      (32 x 128 query, 8 x 128 KV heads).  Prompts are padded to 512 tokens, so each layer costs ~1 s
      of CPU per prompt.  klein concatenates the outputs of layers 9, 18 and 27; the default single
      layer gives the final norm's output instead (same plumbing, 27x cheaper), ``llm_layers=27`` runs
      klein's three-layer path.  28 is refused: the core would give a 28-layer Qwen3 16 heads (its
      "Qwen3 2B" rule).
    - "vae": Flux.2 KL VAE (32 latent channels, 1x1 quant convs), decoder width ``vae_ch`` (multiple of
      32); aliased/sparse on disk.  The encoder (fixed ch 128) is needed for reference images (edit),
      img2img and hires, so it is included by default.
    """
    if hidden_size % 128 or vae_ch % 32:
        raise ValueError("hidden_size must be a multiple of 128 and vae_ch of 32")
    if llm_layers < 1 or llm_layers == 28:
        raise ValueError("llm_layers must be >= 1 and not 28 (the core gives a 28-layer Qwen3 16 heads)")
    out_dir = pathlib.Path(out_dir)
    n_out = sum(1 for layer in _KLEIN_LLM_LAYERS if layer <= llm_layers)
    context_dim = llm_hidden_size * max(n_out, 1)
    dit = dict(kind="flux2-klein-dit", seed=seed, depth=depth, depth_single_blocks=depth_single_blocks,
               hidden_size=hidden_size, context_dim=context_dim, guidance_embed=guidance_embed)
    llm = dict(kind="qwen3", seed=seed, layers=llm_layers, hidden_size=llm_hidden_size,
               intermediate_size=llm_intermediate_size)
    vae = dict(kind="flux2-vae", seed=seed, ch=vae_ch, encoder=vae_encoder)
    return {
        "diffusion_model": build_component(
            cached_path(out_dir, dit), dit,
            lambda s: _flux2_dit(s, depth, depth_single_blocks, hidden_size, context_dim, guidance_embed),
            alias=False, std=None),
        "llm": build_component(cached_path(out_dir, llm), llm,
                          lambda s: _qwen3(s, llm_layers, llm_hidden_size, llm_intermediate_size), alias=True),
        "vae": build_component(cached_path(out_dir, vae), vae,
                          lambda s: kl_vae(s, 32, vae_ch, vae_encoder, quant=True), alias=True),
    }

"""Parts more than one family uses, all fixed size in the core: the CLIP-L and T5-XXL (umt5-xxl) text
encoders, the LDM KL VAE and CLIP vision towers."""

from __future__ import annotations

from ._tensors import Spec


def clip_l(s: Spec) -> None:
    """HF CLIPTextModel (ViT-L/14 text tower), fixed size in clip.hpp."""
    d = 768
    s.add("embeddings.token_embedding.weight", (49408, d))
    s.add("embeddings.position_embedding.weight", (77, d))
    for i in range(12):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s.linear(p + "self_attn." + proj, d, d)
        s.norm(p + "layer_norm1", d)
        s.norm(p + "layer_norm2", d)
        s.linear(p + "mlp.fc1", d, 4 * d)
        s.linear(p + "mlp.fc2", 4 * d, d)
    s.norm("final_layer_norm", d)


def t5_xxl(s: Spec, umt5: bool = False) -> None:
    """T5-XXL encoder, fixed size in t5.hpp (24 layers, 4096, ff 10240, 64 heads).  ``umt5``: the
    umt5-xxl encoder of Wan (T5Runner is_umt5): vocab 256384 and a relative attention bias in every block."""
    d, ff = 4096, 10240
    s.add("shared.weight", (256384 if umt5 else 32128, d))
    for i in range(24):
        p = f"encoder.block.{i}.layer."
        for proj in "qkvo":
            s.linear(f"{p}0.SelfAttention.{proj}", d, d, bias=False)
        if umt5 or i == 0:  # relative position buckets x heads; T5: only in block 0
            s.add(p + "0.SelfAttention.relative_attention_bias.weight", (32, 64))
        s.add(p + "0.layer_norm.weight", (d,), "one")
        s.linear(p + "1.DenseReluDense.wi_0", d, ff, bias=False)
        s.linear(p + "1.DenseReluDense.wi_1", d, ff, bias=False)
        s.linear(p + "1.DenseReluDense.wo", ff, d, bias=False)
        s.add(p + "1.layer_norm.weight", (d,), "one")
    s.add("encoder.final_layer_norm.weight", (d,), "one")


def kl_vae(s: Spec, z: int, dec_ch: int, encoder: bool, quant: bool) -> None:
    """LDM AutoencoderKL (auto_encoder_kl.hpp). Decoder width is read from
    decoder.conv_in (out = 4 * ch; GroupNorm32 needs ch % 32 == 0); the encoder
    is fixed at ch 128. ``quant`` adds the SD1-style 1x1 (post_)quant_conv."""
    mult, n_res = (1, 2, 4, 4), 2

    def resnet(p, c_in, c_out):
        s.norm(p + "norm1", c_in)
        s.conv(p + "conv1", c_in, c_out)
        s.norm(p + "norm2", c_out)
        s.conv(p + "conv2", c_out, c_out)
        if c_in != c_out:
            s.conv(p + "nin_shortcut", c_in, c_out, 1)

    def mid(p, c):
        resnet(p + "mid.block_1.", c, c)
        s.norm(p + "mid.attn_1.norm", c)
        for proj in ("q", "k", "v", "proj_out"):
            s.conv(p + "mid.attn_1." + proj, c, c, 1)
        resnet(p + "mid.block_2.", c, c)

    c = dec_ch * mult[-1]
    s.conv("decoder.conv_in", z, c)
    mid("decoder.", c)
    for i in reversed(range(len(mult))):
        for j in range(n_res + 1):
            resnet(f"decoder.up.{i}.block.{j}.", c, dec_ch * mult[i])
            c = dec_ch * mult[i]
        if i:
            s.conv(f"decoder.up.{i}.upsample.conv", c, c)
    s.norm("decoder.norm_out", c)
    s.conv("decoder.conv_out", c, 3)
    if quant:
        s.conv("post_quant_conv", z, z, 1)
    if encoder:
        ch = c = 128
        s.conv("encoder.conv_in", 3, c)
        for i, m in enumerate(mult):
            for j in range(n_res):
                resnet(f"encoder.down.{i}.block.{j}.", c, ch * m)
                c = ch * m
            if i != len(mult) - 1:
                s.conv(f"encoder.down.{i}.downsample.conv", c, c)
        mid("encoder.", c)
        s.norm("encoder.norm_out", c)
        s.conv("encoder.conv_out", c, 2 * z)
        if quant:
            s.conv("quant_conv", 2 * z, 2 * z, 1)


def clip_vision(s: Spec, d: int, ffn: int, layers: int, projection: int) -> None:
    """A CLIP vision tower with its projection, HF names as the core keeps them (clip.hpp
    CLIPVisionModelProjection: 224 px in 14 px patches; the sizes are fixed per CLIP version)."""
    patches = (224 // 14) ** 2 + 1
    s.add("vision_model.embeddings.patch_embedding.weight", (d, 3, 14, 14))
    s.add("vision_model.embeddings.class_embedding", (d,))
    s.add("vision_model.embeddings.position_embedding.weight", (patches, d))
    s.norm("vision_model.pre_layernorm", d)
    for i in range(layers):
        p = f"vision_model.encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s.linear(p + "self_attn." + proj, d, d)
        s.norm(p + "layer_norm1", d)
        s.norm(p + "layer_norm2", d)
        s.linear(p + "mlp.fc1", d, ffn)
        s.linear(p + "mlp.fc2", ffn, d)
    s.norm("vision_model.post_layernorm", d)
    s.add("visual_projection.weight", (projection, d))

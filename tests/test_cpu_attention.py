"""The core's attention on the CPU backend as our build compiles it (patch 0006: one fused node).

Every transformer block of every model runs through ggml_ext_attention_ext. Patch 0006 replaces its four
nodes (K^T Q, scale, softmax, V x scores) with one node on the CPU backend that never holds a whole score
matrix; its output must be bitwise the four nodes' output, so that pixels do not move.
"""

import numpy as np
import pytest

from native_hooks import PACKED_KERNEL, hooks

_test_hooks = hooks()

needs_fused_attention = pytest.mark.skipif(
    not PACKED_KERNEL, reason="patch 0006 fuses attention where patch 0004's AVX2 kernel is compiled")


def random_qkv(l_q, l_k, channels, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((l_q, channels), dtype=np.float32),
            rng.standard_normal((l_k, channels), dtype=np.float32),
            rng.standard_normal((l_k, channels), dtype=np.float32))


def reference(q, k, v, n_head):
    """softmax(q k^T / sqrt(d)) v per head, in float64; (tokens, channels) in and out."""
    d = q.shape[1] // n_head

    def heads(x):
        return x.reshape(x.shape[0], n_head, d).transpose(1, 0, 2).astype(np.float64)

    scores = heads(q) @ heads(k).transpose(0, 2, 1) / np.sqrt(d)
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return (weights @ heads(v)).transpose(1, 0, 2).reshape(q.shape[0], -1)


@needs_fused_attention
def test_core_attention_is_one_node_without_the_score_matrix():
    l_q = l_k = 1024
    n_head, channels = 8, 320
    score_bytes = n_head * l_q * l_k * 4  # 32 MiB
    q, k, v = random_qkv(l_q, l_k, channels, seed=1)
    _, fused_ops, fused_buffer = _test_hooks._cpu_attention(q, k, v, n_head, 2, on_cpu_backend=True)
    _, core_ops, core_buffer = _test_hooks._cpu_attention(q, k, v, n_head, 2, on_cpu_backend=False)
    assert {"MUL_MAT", "SCALE", "SOFT_MAX"} <= set(core_ops) and core_buffer > score_bytes
    assert "CUSTOM" in fused_ops and not {"MUL_MAT", "SCALE", "SOFT_MAX"} & set(fused_ops)
    assert fused_buffer < score_bytes / 4, (fused_buffer, score_bytes)


# (L_q, L_k, channels, heads): SD1's self- and cross-attention, an odd block edge everywhere, the VAE's one
# 512-wide head (two KC-deep blocks), d_head 16 (the smallest fused), L_k past two KC blocks.
SHAPES = [(256, 256, 320, 8), (100, 77, 320, 8), (37, 300, 512, 1), (7, 17, 32, 2), (50, 600, 160, 2),
          (25, 16, 64, 4)]


@needs_fused_attention
@pytest.mark.parametrize("per_head_inputs", [False, True], ids=["tokens-by-channels", "split-into-heads"])
@pytest.mark.parametrize("l_q, l_k, channels, n_head", SHAPES)
def test_fused_attention_is_bitwise_the_core_graph(l_q, l_k, channels, n_head, per_head_inputs):
    q, k, v = random_qkv(l_q, l_k, channels, seed=l_q * 1000 + l_k)
    unfused, core_ops, _ = _test_hooks._cpu_attention(q, k, v, n_head, 2, on_cpu_backend=False,
                                                per_head_inputs=per_head_inputs)
    assert "SOFT_MAX" in core_ops
    for threads in (1, 2, 3):
        fused, ops, _ = _test_hooks._cpu_attention(q, k, v, n_head, threads, on_cpu_backend=True,
                                             per_head_inputs=per_head_inputs)
        assert "CUSTOM" in ops and "SOFT_MAX" not in ops
        assert fused.shape == (l_q, channels) and fused.dtype == np.float32
        assert np.array_equal(fused, unfused), (threads, float(np.abs(fused - unfused).max()))


@needs_fused_attention
def test_fused_attention_copies_no_heads():
    # From (L, C) inputs the node reads each head in place and writes (L_q, C): no per-head copies.
    q, k, v = random_qkv(64, 64, 128, seed=2)
    _, ops, _ = _test_hooks._cpu_attention(q, k, v, 4, 2)
    assert ops.count("CUSTOM") == 1 and "CONT" not in ops and "CPY" not in ops, ops


@pytest.mark.parametrize("per_head_inputs", [False, True], ids=["tokens-by-channels", "split-into-heads"])
@pytest.mark.parametrize("l_q, l_k, channels, n_head", SHAPES + [(9, 20, 64, 8), (30, 12, 64, 2)])
def test_attention_matches_numpy(l_q, l_k, channels, n_head, per_head_inputs):
    q, k, v = random_qkv(l_q, l_k, channels, seed=l_k)
    expected = reference(q, k, v, n_head)
    result, _, _ = _test_hooks._cpu_attention(q, k, v, n_head, 2, per_head_inputs=per_head_inputs)
    assert np.abs(result - expected).max() < 2e-6 * max(1.0, float(np.abs(expected).max()))


@pytest.mark.parametrize("l_q, l_k, channels, n_head", [(9, 20, 64, 8), (30, 12, 64, 2)])
def test_sizes_the_packed_kernel_declines_keep_the_core_graph(l_q, l_k, channels, n_head):
    # d_head 8, and 12 keys: the unfused products would not run on the packed kernel, so fusing could move
    # the sums; the core's four nodes stay.
    q, k, v = random_qkv(l_q, l_k, channels, seed=3)
    result, ops, _ = _test_hooks._cpu_attention(q, k, v, n_head, 2, on_cpu_backend=True)
    assert "SOFT_MAX" in ops and "CUSTOM" not in ops


def test_bad_shapes_are_refused_with_the_argument_named():
    q, k, v = random_qkv(8, 8, 32, seed=0)
    with pytest.raises(ValueError, match="n_head"):
        _test_hooks._cpu_attention(q, k, v, 5)
    with pytest.raises(ValueError, match="k, v"):
        _test_hooks._cpu_attention(q, k[:, :16], v, 2)

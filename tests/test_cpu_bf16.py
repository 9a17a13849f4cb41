"""cpu_precision="bf16" (patch 0014, kernels/sdcpp_py_packed_gemm.h's bf16 path): products on bf16 operands
summed in f32 by vdpbf16ps, on CPUs with AVX512_BF16, or by AMX tiles (TDPBF16PS) where the CPU has them; there
SDCPP_PY_CPU_KERNELS=avx512 keeps the AVX512_BF16 kernels, which a child process tests.

The kernels are checked against numpy products of the operands rounded to bf16 (round to nearest even): the
only difference left is the f32 summation. A Context opting in makes other pixels than the f32 one, close to
them (PSNR), and its f32 neighbours keep theirs. SDCPP_PY_CPU_KERNELS=avx2 takes the bf16 path away on this
CPU (a child process: it is read once), so the AVX2 kernels the f32 tests run are the only ones then.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from native_hooks import hooks

import sdcpp_py
from sdcpp_py import _core

_test_hooks = hooks()
BF16 = _core.cpu_bf16_products()
needs_bf16 = pytest.mark.skipif(not BF16, reason="no bf16 products here (AVX512_BF16 CPU and x86-64 build)")
AMX = _core.cpu_amx_bf16_products()


def cpu_has_amx_bf16() -> bool:
    """What Linux says of the CPU: AMX tiles with bf16 products (Sapphire Rapids and later)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags and "amx_tile" in flags


def bf16(values) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest even), as float32."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return rounded.astype(np.uint32).view(np.float32)


def relative_error(result, expected):
    return float(np.abs(result - expected).max() / np.sqrt(np.mean(expected**2)))


def rms_error(result, expected):
    return float(np.sqrt(np.mean((result - expected) ** 2) / np.mean(expected**2)))


@needs_bf16
@pytest.mark.parametrize("m, n, k", [(16, 6, 8), (17, 7, 9), (33, 130, 517), (1024, 13, 40), (300, 301, 1000),
                                     (1280, 64, 1152), (20, 4200, 33)])
@pytest.mark.parametrize("a_dtype", [np.float16, np.float32])
def test_products_are_those_of_bf16_operands(m, n, k, a_dtype):
    rng = np.random.default_rng(m * 1000 + n)
    a = rng.standard_normal((m, k)).astype(a_dtype)
    b = rng.standard_normal((n, k)).astype(np.float32)
    expected = bf16(b).astype(np.float64) @ bf16(a.astype(np.float32)).astype(np.float64).T
    exact = b.astype(np.float64) @ a.astype(np.float64).T
    for threads in (1, 2, 3):
        result = _test_hooks._cpu_mul_mat(a, b, threads, bf16=True)
        # f32 sums of exact bf16 products: ~1e-7; the f32 path's result is ~1e-3 away from these.
        assert relative_error(result, expected) < 2e-6, (threads, a_dtype)
        assert relative_error(result, exact) > 1e-4, "the operands were not rounded to bf16"
    assert relative_error(_test_hooks._cpu_mul_mat(a, b, 2), exact) < 1e-4, "an f32 graph is still f32"


@needs_bf16
@pytest.mark.parametrize("m, n, k", [(16, 6, 8), (33, 130, 517), (77, 9, 31)])
def test_bf16_weights_are_read_as_they_are(m, n, k):
    # weight_type="bf16": a (the weights) holds bfloat16 bits; the kernel pairs them without conversion.
    rng = np.random.default_rng(k)
    a = bf16(rng.standard_normal((m, k)).astype(np.float32))
    b = rng.standard_normal((n, k)).astype(np.float32)
    bits = (a.view(np.uint32) >> 16).astype(np.uint16)
    expected = bf16(b).astype(np.float64) @ a.astype(np.float64).T
    for threads in (1, 2):
        assert relative_error(_test_hooks._cpu_mul_mat(bits, b, threads, bf16=True), expected) < 2e-6


@needs_bf16
def test_bf16_results_do_not_depend_on_the_thread_count():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((200, 2880)).astype(np.float16)
    b = rng.standard_normal((96, 2880)).astype(np.float32)
    one = _test_hooks._cpu_mul_mat(a, b, 1, bf16=True)
    assert all(np.array_equal(one, _test_hooks._cpu_mul_mat(a, b, t, bf16=True)) for t in (2, 4))


def reference_conv(kernel, image, stride, padding):
    kernel, image = bf16(kernel.astype(np.float32)).astype(np.float64), bf16(image).astype(np.float64)
    OC, IC, KH, KW = kernel.shape
    N, _, H, W = image.shape
    padded = np.pad(image, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    OH, OW = (H + 2 * padding - KH) // stride + 1, (W + 2 * padding - KW) // stride + 1
    out = np.zeros((N, OC, OH, OW))
    for y in range(KH):
        for x in range(KW):
            patch = padded[:, :, y:y + stride * OH:stride, x:x + stride * OW:stride]
            out += np.einsum("nchw,oc->nohw", patch, kernel[:, :, y, x])
    return out


@needs_bf16
@pytest.mark.parametrize("shape, kernel_size, stride, padding", [
    ((1, 4, 32, 32, 320), 3, 1, 1), ((2, 27, 9, 11, 13), 3, 2, 1), ((1, 64, 8, 8, 128), 1, 1, 0),
    ((1, 3, 17, 5, 16), 3, 1, 1), ((1, 59, 8, 8, 24), 3, 1, 1),  # 531 steps, past one bf16 block
    ((2, 40, 4, 4, 24), 3, 1, 1)])  # rows of 4 packed as masked runs, a batch stacked
def test_fused_convolution_in_bf16(shape, kernel_size, stride, padding, monkeypatch):
    monkeypatch.setenv("SDCPP_PY_CPU_CONV", "direct")  # the direct node (Winograd's: test_cpu_winograd.py)
    N, IC, H, W, OC = shape
    rng = np.random.default_rng(IC * OC)
    kernel = rng.standard_normal((OC, IC, kernel_size, kernel_size)).astype(np.float16)
    image = rng.standard_normal((N, IC, H, W)).astype(np.float32)
    expected = reference_conv(kernel, image, stride, padding)
    result, ops, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, stride=stride, padding=padding,
                                              n_threads=2, bf16=True)
    assert ops == ["CUSTOM"]
    assert relative_error(result, expected) < 2e-6
    f32, _, _ = _test_hooks._core_conv_2d(kernel.view(np.uint16), image, stride=stride, padding=padding, n_threads=2)
    assert relative_error(f32, expected) > 1e-4


def reference_attention_bounds(q, k, v, n_head, ambiguity=1e-5):
    """The lowest and highest outputs bf16 attention can give: scores of the operands rounded to bf16 (float64),
    exp(score - max) rounded to bf16 as the second product's operand, the output normalized by the exact sum
    after it. A weight within `ambiguity` (relative) of a bf16 rounding midpoint may round either way in the
    kernel, whose scores carry f32 sums in whatever order its tiles take (AVX512_BF16 registers and AMX tiles
    differ): one such weight near 1 moves an output by ~2^-8 of a value row."""
    d = q.shape[1] // n_head
    lowest, highest = np.zeros(q.shape), np.zeros(q.shape)
    for head in range(n_head):
        cols = slice(head * d, (head + 1) * d)
        scores = bf16(q[:, cols]).astype(np.float64) @ bf16(k[:, cols]).astype(np.float64).T / np.sqrt(d)
        weights = np.exp(scores - scores.max(axis=1, keepdims=True))
        nearest = bf16(weights.astype(np.float32)).astype(np.float64)
        # The bf16 values either side of each (positive) weight, and the weights that lie near their midpoint.
        below = (weights.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32).astype(np.float64)
        above = (below.astype(np.float32).view(np.uint32) + np.uint32(0x10000)).view(np.float32).astype(np.float64)
        ambiguous = np.abs(weights - (below + above) / 2) <= ambiguity * weights
        low, high = np.where(ambiguous, below, nearest), np.where(ambiguous, above, nearest)
        values = bf16(v[:, cols]).astype(np.float64)
        positive, negative = np.maximum(values, 0), np.minimum(values, 0)
        sums = weights.sum(axis=1, keepdims=True)
        lowest[:, cols] = (low @ positive + high @ negative) / sums
        highest[:, cols] = (high @ positive + low @ negative) / sums
    return lowest, highest


def within(result, bounds, slack):
    """Whether each element lies within its bounds, give or take `slack` times the outputs' RMS (f32 sums)."""
    lowest, highest = bounds
    margin = slack * np.sqrt(np.mean(((lowest + highest) / 2) ** 2))
    return bool(np.all((result >= lowest - margin) & (result <= highest + margin)))


@needs_bf16
@pytest.mark.parametrize("L_q, L_k, C, n_head, per_head_inputs", [(64, 77, 320, 8, False), (200, 200, 128, 2, True),
                                                                 (37, 300, 64, 1, False), (70, 1030, 320, 8, False),
                                                                 (40, 1101, 80, 2, True), (57, 45, 96, 2, False),
                                                                 (33, 50, 84, 2, False)])  # d_head 42: 6-wide tiles
def test_fused_attention_in_bf16(L_q, L_k, C, n_head, per_head_inputs):
    rng = np.random.default_rng(L_q + L_k)
    q, k, v = (rng.standard_normal((length, C)).astype(np.float32) for length in (L_q, L_k, L_k))
    result, ops, _ = _test_hooks._cpu_attention(q, k, v, n_head, 2, per_head_inputs=per_head_inputs, bf16=True)
    assert "CUSTOM" in ops
    bounds = reference_attention_bounds(q, k, v, n_head)
    assert within(result, bounds, 1e-5)
    f32, _, _ = _test_hooks._cpu_attention(q, k, v, n_head, 2, per_head_inputs=per_head_inputs)
    assert not within(f32, bounds, 1e-5), "the operands were not rounded"
    other, _, _ = _test_hooks._cpu_attention(q, k, v, n_head, 3, per_head_inputs=per_head_inputs, bf16=True)
    assert np.array_equal(result, other), "the thread count changes nothing"


@needs_bf16
@pytest.mark.parametrize("d_head", [64, 40])
def test_bf16_attention_with_huge_score_gaps_stays_finite(d_head):
    # Scores ~1e16 apart: every weight but the largest underflows (ggml's f32 softmax: exactly 0). The bf16
    # path's exp must give ~0 there too, not NaN from its range reduction, and so the max key's value row, its
    # weight 1 also where the scale (1 / sqrt(40)) rounds the maximum's scaled score.
    rng = np.random.default_rng(11)
    q, k, v = (rng.standard_normal((48, d_head)).astype(np.float32) for _ in range(3))
    q *= np.float32(1e15)
    result, _, _ = _test_hooks._cpu_attention(q, k, v, 1, 2, bf16=True)
    f32, _, _ = _test_hooks._cpu_attention(q, k, v, 1, 2)
    assert np.isfinite(result).all()
    assert all((f32[i] == v).all(axis=1).any() for i in range(len(q))), "f32: one key's value row each"
    assert relative_error(result, f32) < 1e-2


@needs_bf16
def test_bf16_attention_keeps_a_part_key_slivers_padding_out_of_the_maximum():
    # 77 keys: the last sliver of 6 holds 5 real ones and a zero padding key (score 0). Every real score is
    # about -6500; were the padding's 0 taken for the maximum, every weight would be clamped to the same 2^-126
    # and the output the plain mean of the value rows. Operands exact in bf16, so the f32 path is the reference.
    rng = np.random.default_rng(5)
    direction = bf16(rng.standard_normal(40))
    k = bf16(direction + 0.01 * rng.standard_normal((77, 40)))
    q = np.tile(-1024 * direction, (20, 1)).astype(np.float32)
    v = bf16(rng.standard_normal((77, 40)))
    result, _, _ = _test_hooks._cpu_attention(q, k, v, 1, 2, bf16=True)
    f32, _, _ = _test_hooks._cpu_attention(q, k, v, 1, 2)
    assert np.isfinite(result).all()
    assert relative_error(result, f32) < 1e-2
    assert relative_error(np.broadcast_to(v.mean(axis=0), f32.shape), f32) > 0.3  # what the bug would give


def psnr(a, b) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@needs_bf16
def test_bf16_context_rounds_products(sd1_checkpoint):
    # The full-size synthetic SD1 UNet (its convolutions and attention on the fused nodes, weights loaded as
    # bf16), at 128x128 so that its products are large enough for the packed kernel.
    options = dict(width=128, height=128, steps=2, cfg_scale=7.0, seed=7, sampler="euler")
    with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2, vae_decode_only=True) as f32_context:
        f32_image = f32_context.txt2img("a lighthouse at dusk", **options)[0]
        with sdcpp_py.Context(model=sd1_checkpoint, n_threads=2, vae_decode_only=True,
                              cpu_precision="bf16") as bf16_context:
            bf16_image = bf16_context.txt2img("a lighthouse at dusk", **options)[0]
            # One process, both precisions: each context's graphs carry their own.
            f32_again = f32_context.txt2img("a lighthouse at dusk", **options)[0]
    assert np.array_equal(f32_image, f32_again)
    assert not np.array_equal(bf16_image, f32_image), "cpu_precision='bf16' made the f32 pixels"
    assert psnr(bf16_image, f32_image) > 30


def test_backends_say_which_precisions_a_context_takes():
    assert sdcpp_py.backends()["cpu_precisions"] == (["f32", "bf16"] if BF16 else ["f32"])


def test_backends_say_what_runs_the_bf16_products():
    # AMX tiles wherever the CPU has them (with bf16 products in the build), unless restricted to AVX-512.
    restricted = os.environ.get("SDCPP_PY_CPU_KERNELS") in ("avx512", "avx2")
    expected = ("amx" if cpu_has_amx_bf16() and not restricted else "avx512_bf16") if BF16 else None
    assert sdcpp_py.backends()["cpu_bf16_products"] == expected


@pytest.mark.skipif(not AMX, reason="the bf16 products take AVX512_BF16 registers here already")
def test_avx512_restriction_keeps_the_avx512_bf16_kernels_tested():
    # Where AMX tiles take the bf16 products, SDCPP_PY_CPU_KERNELS=avx512 (read once: a child process) gives
    # them back to the AVX512_BF16 kernels, and this file's kernel tests run on those there.
    kernel_tests = ("products_are or weights_are_read or thread_count or fused_convolution or fused_attention or "
                    "huge_score or part_key or what_runs or test_bf16_products_round_the_transformed_operands or "
                    "test_q8_0_kernels_with_bf16_products_round_their_transforms")
    winograd_tests = os.path.join(os.path.dirname(__file__), "test_cpu_winograd.py")
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, winograd_tests,
                            "-k", kernel_tests], env=dict(os.environ, SDCPP_PY_CPU_KERNELS="avx512"),
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-2000:]
    summary = child.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary


def test_cpu_precision_is_checked_by_name(sd1_checkpoint):
    with pytest.raises(ValueError, match="cpu_precision='fp8' is not a valid CpuPrecision"):
        sdcpp_py.Context(model=sd1_checkpoint, cpu_precision="fp8")
    assert sdcpp_py.CpuPrecision.coerce("BF16", "cpu_precision") is sdcpp_py.CpuPrecision.BF16


def test_the_command_lines_take_cpu_precision(sd1_checkpoint):
    from sdcpp_py import cli
    from sdcpp_py.server._cli import build_parser

    served = build_parser().parse_args(["-m", str(sd1_checkpoint), "--cpu-precision", "bf16"])
    assert served.cpu_precision == "bf16"
    generate = cli.build_parser().parse_args(["generate", "-m", str(sd1_checkpoint), "-p", "x", "--cpu-precision",
                                              "bf16"])
    assert generate.cpu_precision == "bf16"


RESTRICTED = """
import sdcpp_py
from sdcpp_py import _core
import sys
print(_core.cpu_bf16_products(), len(_core.fused_cpu_kernels()), sdcpp_py.backends()["cpu_precisions"])
try:
    sdcpp_py.Context(model=sys.argv[1], cpu_precision="bf16")
except ValueError as error:
    print(error)
"""


def test_avx2_restriction_takes_bf16_away(sd1_checkpoint):
    # On any CPU: with SDCPP_PY_CPU_KERNELS=avx2 (or without AVX512_BF16) the AVX2 kernels remain and a bf16
    # Context is refused with the reason, not run in f32.
    env = dict(os.environ, SDCPP_PY_CPU_KERNELS="avx2")
    child = subprocess.run([sys.executable, "-c", RESTRICTED, str(sd1_checkpoint)], env=env, capture_output=True,
                           text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    first, message = child.stdout.splitlines()[:2]
    assert first == f"False {len(_core.fused_cpu_kernels())} ['f32']"
    assert "cpu_precision='bf16' needs bf16 products" in message
    # Where the backend has the kernel, the restriction is the reason given; elsewhere the CPU or build.
    assert ("SDCPP_PY_CPU_KERNELS=avx2 turned it off" in message) == BF16, message

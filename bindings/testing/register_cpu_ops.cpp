// Windows on ggml's CPU matrix product and convolution for the test suite: patches 0004 (our packed kernel)
// and 0005 (im2col) are checked against numpy through them, on shapes the generation tests do not isolate.
// The core's attention, convolution and GEGLU (patches 0006-0008) have theirs in register_core_graphs.cpp.
#include "testing.hpp"

#include <chrono>

#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"
#include "sdcpp_py_claims.h"

namespace sdcpp::testing {

namespace {

struct GgmlContextDeleter {
    void operator()(ggml_context* ctx) const { ggml_free(ctx); }
};
struct CpuBackendDeleter {
    void operator()(ggml_backend_t backend) const { ggml_backend_free(backend); }
};

void compute_on_cpu(ggml_context* ctx, ggml_tensor* result, int n_threads);

ggml_type float_type_of(const py::array& array, const char* name) {
    if (array.ndim() != 2) {
        throw std::invalid_argument(std::string(name) + ": expected a 2-D array");
    }
    if (array.dtype().is(py::dtype::of<float>())) return GGML_TYPE_F32;
    if (array.dtype().kind() == 'f' && array.dtype().itemsize() == 2) return GGML_TYPE_F16;
    if (array.dtype().is(py::dtype::of<uint16_t>())) return GGML_TYPE_BF16;  // bfloat16 bits
    throw std::invalid_argument(std::string(name) + ": expected float32, float16 or uint16 (bfloat16 bits)");
}

}  // namespace

// rows (rows, n) float32 values quantized to q8_0 as the loader does (ggml_quantize_chunk), into out.
void quantize_q8_0_rows(const float* values, int64_t rows, int64_t n, void* out) {
    if (n % ggml_blck_size(GGML_TYPE_Q8_0) != 0) {
        throw std::invalid_argument("q8_0: a row's length must be a multiple of 32, got " + std::to_string(n));
    }
    ggml_quantize_chunk(GGML_TYPE_Q8_0, values, out, 0, rows, n, nullptr);
}

namespace {

// x (rows, n) float32 through q8_0 and back: the values a q8_0 weight holds.
py::array_t<float> q8_0_round_trip(const py::array_t<float, py::array::c_style>& x) {
    if (x.ndim() != 2) throw std::invalid_argument("x: expected a 2-D array");
    const int64_t rows = x.shape(0), n = x.shape(1);
    std::vector<char> blocks(ggml_row_size(GGML_TYPE_Q8_0, n) * rows);
    quantize_q8_0_rows(x.data(), rows, n, blocks.data());
    py::array_t<float> result({rows, n});
    ggml_get_type_traits(GGML_TYPE_Q8_0)->to_float(blocks.data(), result.mutable_data(), rows * n);
    return result;
}

// ggml_mul_mat(a, b) on the CPU backend: for a (m, k) and b (n, k), the (n, m) float32 array b @ a.T.
// q8_0_a: a (float32) quantized to q8_0 first, as a weight_type="q8_0" weight.
py::array_t<float> cpu_mul_mat(const py::array& a_in, const py::array& b_in, int n_threads, bool bf16, bool q8_0_a) {
    const BuildPrecision precision(bf16);
    const ggml_type a_given = float_type_of(a_in, "a"), b_type = float_type_of(b_in, "b");
    if (q8_0_a && a_given != GGML_TYPE_F32) throw std::invalid_argument("a: q8_0_a expects float32 values");
    const ggml_type a_type = q8_0_a ? GGML_TYPE_Q8_0 : a_given;
    const auto a = py::array::ensure(a_in, py::array::c_style), b = py::array::ensure(b_in, py::array::c_style);
    const int64_t m = a.shape(0), k = a.shape(1), n = b.shape(0);
    if (b.shape(1) != k) {
        throw std::invalid_argument("b: expected " + std::to_string(k) + " columns like a, got " +
                                    std::to_string(b.shape(1)));
    }
    if (n_threads < 1) {
        throw std::invalid_argument("n_threads: expected at least 1, got " + std::to_string(n_threads));
    }
    // Tensors, the graph and ggml's work buffer (b converted to a's type, one cache line per thread).
    const size_t bytes = a.nbytes() + b.nbytes() + 2 * static_cast<size_t>(n * k) * sizeof(float) +
                         static_cast<size_t>(n * m) * sizeof(float) + ggml_graph_overhead() +
                         8 * ggml_tensor_overhead() + (1u << 20);
    std::unique_ptr<ggml_context, GgmlContextDeleter> ctx(ggml_init({bytes, nullptr, false}));
    if (!ctx) throw std::runtime_error("ggml_init failed");
    ggml_tensor* ta = ggml_new_tensor_2d(ctx.get(), a_type, k, m);
    ggml_tensor* tb = ggml_new_tensor_2d(ctx.get(), b_type, k, n);
    if (q8_0_a) {
        quantize_q8_0_rows(static_cast<const float*>(a.data()), m, k, ta->data);
    } else {
        std::memcpy(ta->data, a.data(), a.nbytes());
    }
    std::memcpy(tb->data, b.data(), b.nbytes());
    ggml_tensor* product = ggml_mul_mat(ctx.get(), ta, tb);
    compute_on_cpu(ctx.get(), product, n_threads);
    py::array_t<float> result({n, m});
    std::memcpy(result.mutable_data(), product->data, static_cast<size_t>(n * m) * sizeof(float));
    return result;
}

// Through the registry's CPU backend, not ggml-cpu's own entry points: a portable build (ggml's CPU variants
// as modules) has no ggml-cpu to link against. Same plan and threads as ggml_graph_compute_with_ctx.
void compute_on_cpu(ggml_context* ctx, ggml_tensor* result, int n_threads) {
    ggml_cgraph* graph = ggml_new_graph(ctx);
    ggml_build_forward_expand(graph, result);
    std::unique_ptr<ggml_backend, CpuBackendDeleter> backend(
        ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr));
    if (!backend) throw std::runtime_error("no CPU backend in ggml's registry");
    auto set_n_threads = reinterpret_cast<ggml_backend_set_n_threads_t>(ggml_backend_reg_get_proc_address(
        ggml_backend_dev_backend_reg(ggml_backend_get_device(backend.get())), "ggml_backend_set_n_threads"));
    if (set_n_threads == nullptr) throw std::runtime_error("the CPU backend cannot set its thread count");
    set_n_threads(backend.get(), n_threads);
    ggml_status status;
    {
        py::gil_scoped_release release;
        const auto start = std::chrono::steady_clock::now();
        status = ggml_backend_graph_compute(backend.get(), graph);
        last_compute_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    if (status != GGML_STATUS_SUCCESS) throw std::runtime_error("ggml_graph_compute failed");
}

// ggml_conv_2d (im2col, then a matrix product): f16 kernel (OC, IC, KH, KW), f32 image (N, IC, H, W).
py::array_t<float> cpu_conv_2d(const py::array_t<uint16_t, py::array::c_style>& kernel_f16_bits,
                               const py::array_t<float, py::array::c_style>& image, int stride, int padding,
                               int n_threads, bool bf16) {
    const BuildPrecision precision(bf16);
    const ConvShape shape = checked_conv_shape(kernel_f16_bits, image, stride, padding, 1, n_threads);
    const int64_t N = shape.N, IC = shape.IC, H = shape.H, W = shape.W, OC = shape.OC, KH = shape.KH, KW = shape.KW,
                  OH = shape.OH, OW = shape.OW;
    const size_t columns = static_cast<size_t>(N * OH * OW * IC * KH * KW) * 2;
    const size_t output = static_cast<size_t>(N * OC * OH * OW) * sizeof(float);
    const size_t bytes = kernel_f16_bits.nbytes() + image.nbytes() + columns + 3 * output + ggml_graph_overhead() +
                         16 * ggml_tensor_overhead() + (1u << 20);
    std::unique_ptr<ggml_context, GgmlContextDeleter> ctx(ggml_init({bytes, nullptr, false}));
    if (!ctx) throw std::runtime_error("ggml_init failed");
    ggml_tensor* tk = ggml_new_tensor_4d(ctx.get(), GGML_TYPE_F16, KW, KH, IC, OC);
    ggml_tensor* ti = ggml_new_tensor_4d(ctx.get(), GGML_TYPE_F32, W, H, IC, N);
    std::memcpy(tk->data, kernel_f16_bits.data(), kernel_f16_bits.nbytes());
    std::memcpy(ti->data, image.data(), image.nbytes());
    ggml_tensor* out = ggml_conv_2d(ctx.get(), tk, ti, stride, stride, padding, padding, 1, 1);
    compute_on_cpu(ctx.get(), out, n_threads);
    py::array_t<float> result({N, OC, OH, OW});
    std::memcpy(result.mutable_data(), out->data, output);
    return result;
}

// A float32 or float16 numpy array (1-4 dimensions) as a new ggml tensor of the same shape and values.
ggml_tensor* tensor_of(ggml_context* ctx, const py::array& values, const char* name) {
    ggml_type type;
    if (values.dtype().is(py::dtype::of<float>())) type = GGML_TYPE_F32;
    else if (values.dtype().kind() == 'f' && values.dtype().itemsize() == 2) type = GGML_TYPE_F16;
    else throw std::invalid_argument(std::string(name) + ": expected float32 or float16");
    if (values.ndim() < 1 || values.ndim() > 4) {
        throw std::invalid_argument(std::string(name) + ": expected 1-4 dimensions");
    }
    int64_t ne[4] = {1, 1, 1, 1};
    for (py::ssize_t axis = 0; axis < values.ndim(); ++axis) ne[values.ndim() - 1 - axis] = values.shape(axis);
    ggml_tensor* t = ggml_new_tensor_4d(ctx, type, ne[0], ne[1], ne[2], ne[3]);
    const auto contiguous = py::array::ensure(values, py::array::c_style);
    std::memcpy(t->data, contiguous.data(), contiguous.nbytes());
    return t;
}

// A contiguous ggml tensor's values as a numpy array of `ndim` dimensions and the given dtype.
py::array array_of(const ggml_tensor* t, int ndim, const py::dtype& dtype) {
    std::vector<py::ssize_t> shape(ndim);
    for (int axis = 0; axis < ndim; ++axis) shape[axis] = t->ne[ndim - 1 - axis];
    py::array result(dtype, shape);
    std::memcpy(result.mutable_data(), t->data, ggml_nbytes(t));
    return result;
}

std::unique_ptr<ggml_context, GgmlContextDeleter> context_for(size_t data_bytes) {
    std::unique_ptr<ggml_context, GgmlContextDeleter> ctx(
        ggml_init({data_bytes + ggml_graph_overhead() + 8 * ggml_tensor_overhead() + (1u << 20), nullptr, false}));
    if (!ctx) throw std::runtime_error("ggml_init failed");
    return ctx;
}

// ggml_cont(ggml_permute(x, ...)) on the CPU backend, axes as numpy.transpose's: x.transpose(axes).
py::array cpu_permuted_copy(const py::array& x, const std::vector<int>& axes, int n_threads) {
    const int ndim = static_cast<int>(x.ndim());
    if (static_cast<int>(axes.size()) != ndim) throw std::invalid_argument("axes: expected one per dimension of x");
    if (n_threads < 1) throw std::invalid_argument("n_threads: expected at least 1");
    // ggml dimension d is numpy axis ndim - 1 - d; ggml_permute sends dimension d to p[d] (the rest stay).
    int p[4] = {0, 1, 2, 3};
    std::vector<bool> seen(ndim, false);
    for (int j = 0; j < ndim; ++j) {
        if (axes[j] < 0 || axes[j] >= ndim || seen[axes[j]]) throw std::invalid_argument("axes: not a permutation");
        seen[axes[j]] = true;
        p[ndim - 1 - axes[j]] = ndim - 1 - j;
    }
    auto ctx = context_for(2 * x.nbytes());
    ggml_tensor* t = tensor_of(ctx.get(), x, "x");
    ggml_tensor* copy = ggml_cont(ctx.get(), ggml_permute(ctx.get(), t, p[0], p[1], p[2], p[3]));
    std::memset(copy->data, 0, ggml_nbytes(copy));  // its pages' first touch, outside the timed compute
    compute_on_cpu(ctx.get(), copy, n_threads);
    return array_of(copy, ndim, x.dtype());
}

// ggml_concat(a, b, dim) on the CPU backend, dim as a numpy axis: numpy.concatenate((a, b), axis).
py::array cpu_concat(const py::array& a, const py::array& b, int axis, int n_threads) {
    const int ndim = static_cast<int>(a.ndim());
    if (b.ndim() != ndim || !a.dtype().is(b.dtype())) {
        throw std::invalid_argument("b: expected a's dimensions and dtype");
    }
    if (axis < 0 || axis >= ndim) throw std::invalid_argument("axis: out of range");
    for (int d = 0; d < ndim; ++d) {  // else ggml_concat's assertion would end the process
        if (d != axis && a.shape(d) != b.shape(d)) {
            throw std::invalid_argument("b: expected a's size along axis " + std::to_string(d));
        }
    }
    if (n_threads < 1) throw std::invalid_argument("n_threads: expected at least 1");
    auto ctx = context_for(2 * (a.nbytes() + b.nbytes()));
    ggml_tensor* joined =
        ggml_concat(ctx.get(), tensor_of(ctx.get(), a, "a"), tensor_of(ctx.get(), b, "b"), ndim - 1 - axis);
    std::memset(joined->data, 0, ggml_nbytes(joined));  // its pages' first touch, outside the timed compute
    compute_on_cpu(ctx.get(), joined, n_threads);
    return array_of(joined, ndim, a.dtype());
}

}  // namespace

ConvShape checked_conv_shape(const py::array& kernel_f16_bits, const py::array& image, int stride, int padding,
                             int dilation, int n_threads) {
    if (kernel_f16_bits.ndim() != 4) throw std::invalid_argument("kernel: expected (OC, IC, KH, KW)");
    if (image.ndim() != 4) throw std::invalid_argument("image: expected (N, IC, H, W)");
    ConvShape s{image.shape(0), image.shape(1), image.shape(2), image.shape(3), kernel_f16_bits.shape(0),
                kernel_f16_bits.shape(2), kernel_f16_bits.shape(3), 0, 0};
    if (kernel_f16_bits.shape(1) != s.IC) {
        throw std::invalid_argument("image: channel count differs from the kernel's");
    }
    if (stride < 1 || dilation < 1 || padding < 0 || n_threads < 1) {
        throw std::invalid_argument("stride, dilation, n_threads: expected at least 1; padding: at least 0");
    }
    s.OH = (s.H + 2 * padding - dilation * (s.KH - 1) - 1) / stride + 1;
    s.OW = (s.W + 2 * padding - dilation * (s.KW - 1) - 1) / stride + 1;
    if (s.OH < 1 || s.OW < 1) throw std::invalid_argument("image: smaller than the kernel");
    return s;
}

namespace {

// Winograd's rounds as its node's threads take them (sdcpp_py_claims.h), on threads of our own: `runs` runs on
// the same two counters (fixed: none, each thread its fixed share), the last thread sleeping slow_us after each
// range it takes. Per run, each thread's ranges; then the counters as the runs left them.
py::tuple claimed_ranges(int64_t units, int64_t max_units, int64_t min_units, int n_threads, int runs, int slow_us,
                         bool fixed) {
    if (units < 0 || units > (int64_t{1} << 30) || n_threads < 1 || n_threads > 64 || runs < 1 || slow_us < 0) {
        throw std::invalid_argument("units: 0..2^30, n_threads: 1..64, runs: at least 1, slow_us: at least 0");
    }
    int32_t counters[2] = {0, 0};
    py::list all_runs;
    for (int run = 0; run < runs; ++run) {
        std::vector<std::vector<std::pair<int64_t, int64_t>>> taken(n_threads);
        {
            py::gil_scoped_release unlocked;
            std::vector<std::thread> threads;
            for (int t = 0; t < n_threads; ++t) {
                threads.emplace_back([&, t] {
                    sdcpp_py_gemm::ClaimedRanges ranges(fixed ? nullptr : counters, t, n_threads, units, max_units,
                                                        min_units);
                    for (auto range = ranges.next(); !range.empty(); range = ranges.next()) {
                        taken[t].emplace_back(range.u0, range.u1);
                        if (t == n_threads - 1 && slow_us > 0) {
                            std::this_thread::sleep_for(std::chrono::microseconds(slow_us));
                        }
                    }
                    ranges.finish();
                });
            }
            for (auto& thread : threads) thread.join();
        }
        py::list per_thread;
        for (const auto& ranges : taken) per_thread.append(py::cast(ranges));
        all_runs.append(per_thread);
    }
    return py::make_tuple(all_runs, py::make_tuple(counters[0], counters[1]));
}

}  // namespace

void register_cpu_ops(py::module_& m) {
    m.def("_cpu_mul_mat", &cpu_mul_mat, py::arg("a"), py::arg("b"), py::arg("n_threads") = 1, py::arg("bf16") = false,
          py::arg("q8_0_a") = false,
          "Test hook: ggml_mul_mat on the CPU backend, b @ a.T for float16/float32/uint16 (bfloat16 bits) a (m, k) "
          "and b (n, k); bf16: built as for cpu_precision='bf16'; q8_0_a: a (float32) quantized to q8_0 first.");
    m.def("_q8_0_round_trip", &q8_0_round_trip, py::arg("x"),
          "Test hook: float32 rows (rows, n) quantized to q8_0 as the loader does, and back.");
    m.def("_cpu_conv_2d", &cpu_conv_2d, py::arg("kernel_f16_bits"), py::arg("image"), py::arg("stride") = 1,
          py::arg("padding") = 0, py::arg("n_threads") = 1, py::arg("bf16") = false,
          "Test hook: ggml_conv_2d on the CPU backend; the kernel as float16 bits (uint16 view).");
    m.def("_cpu_permuted_copy", &cpu_permuted_copy, py::arg("x"), py::arg("axes"), py::arg("n_threads") = 1,
          "Test hook: ggml_cont(ggml_permute(x)) on the CPU backend for float32/float16 x of 1-4 dimensions, axes as "
          "numpy.transpose's.");
    m.def("_cpu_concat", &cpu_concat, py::arg("a"), py::arg("b"), py::arg("axis"), py::arg("n_threads") = 1,
          "Test hook: ggml_concat(a, b) on the CPU backend along a numpy axis.");
    m.def("_claimed_ranges", &claimed_ranges, py::arg("units"), py::arg("max_units"), py::arg("min_units"),
          py::arg("n_threads"), py::arg("runs") = 1, py::arg("slow_us") = 0, py::arg("fixed") = false,
          "Test hook: ClaimedRanges (the Winograd node's rounds) on n_threads threads of its own, `runs` times on the "
          "same counters (fixed: without them, fixed shares), the last thread sleeping slow_us after each range: "
          "(runs of per-thread [(u0, u1)], counters after).");
}

}  // namespace sdcpp::testing

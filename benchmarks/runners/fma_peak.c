// The CPU's multiply-add peak, for benchmarks/cpu_kernels.py: independent chains of FMA (AVX2, AVX-512) and
// BF16 dot-product (AVX512_BF16 vdpbf16ps) instructions on every thread, with no memory traffic.
// Prints one line per instruction set the CPU has: "<name> <threads> <GFLOP/s>".
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#define CHAINS 12  // enough independent accumulators to cover the FMA latency on both pipes
#define ROUNDS 20000000L

__attribute__((target("avx2,fma"))) static float fma_avx2(void) {
    __m256 acc[CHAINS], a = _mm256_set1_ps(1.0f - 1e-7f), b = _mm256_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_ps((float)c);
    for (long r = 0; r < ROUNDS; r++)
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
    float out = 0;
    for (int c = 0; c < CHAINS; c++) out += _mm256_cvtss_f32(acc[c]);
    return out;
}

__attribute__((target("avx512f"))) static float fma_avx512(void) {
    __m512 acc[CHAINS], a = _mm512_set1_ps(1.0f - 1e-7f), b = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
    for (long r = 0; r < ROUNDS; r++)
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
    float out = 0;
    for (int c = 0; c < CHAINS; c++) out += _mm512_reduce_add_ps(acc[c]);
    return out;
}

__attribute__((target("avx512f,avx512bf16"))) static float dot_bf16(void) {
    __m512 acc[CHAINS];
    __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3380);
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
    for (long r = 0; r < ROUNDS; r++)
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
    float out = 0;
    for (int c = 0; c < CHAINS; c++) out += _mm512_reduce_add_ps(acc[c]);
    return out;
}

static void measure(const char* name, float (*kernel)(void), double flops_per_instruction) {
    volatile float sink = 0;
    int threads = 1;
    double start = omp_get_wtime();
#pragma omp parallel
    {
#pragma omp single
        threads = omp_get_num_threads();
        sink += kernel();
    }
    double seconds = omp_get_wtime() - start;
    printf("%s %d %.1f\n", name, threads, threads * flops_per_instruction * CHAINS * ROUNDS / seconds / 1e9);
}

int main(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) measure("avx2_fma_f32", fma_avx2, 16);
    if (__builtin_cpu_supports("avx512f")) measure("avx512_fma_f32", fma_avx512, 32);
    if (__builtin_cpu_supports("avx512bf16")) measure("avx512_bf16_dot", dot_bf16, 64);
    return 0;
}

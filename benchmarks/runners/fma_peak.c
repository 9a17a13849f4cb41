// The CPU's multiply-add peak, for benchmarks/cpu_kernels.py: independent chains of FMA (AVX2, AVX-512) and
// BF16 dot-product (AVX512_BF16 vdpbf16ps; AMX TDPBF16PS on four tiles) instructions on every thread, with no
// memory traffic.
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

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#define AMX_ROUNDS (ROUNDS / 40)  // a TDPBF16PS does 16x16x32 multiply-adds: 256 times a vdpbf16ps's
struct tile_shapes {
    unsigned char palette, start_row, reserved[14];
    unsigned short bytes_per_row[16];
    unsigned char rows[16];
} __attribute__((aligned(64)));

// Whether Linux gives this process the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA).
static int amx_granted(void) { return syscall(SYS_arch_prctl, 0x1023, 18) == 0; }

__attribute__((target("amx-tile,amx-bf16"))) static float dot_amx(void) {
    struct tile_shapes shapes = {.palette = 1};
    for (int t = 0; t < 8; t++) shapes.rows[t] = 16, shapes.bytes_per_row[t] = 64;
    _tile_loadconfig(&shapes);
    unsigned short ones[16 * 32];
    for (int i = 0; i < 16 * 32; i++) ones[i] = 0x3f80;  // bf16 1.0
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    _tile_loadd(4, ones, 64);
    _tile_loadd(5, ones, 64);
    _tile_loadd(6, ones, 64);
    _tile_loadd(7, ones, 64);
    for (long r = 0; r < AMX_ROUNDS; r++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    float out[16 * 16];
    _tile_stored(0, out, 64);
    _tile_release();
    return out[0];
}
#endif

static void measure_rounds(const char* name, float (*kernel)(void), double flops_per_round);
static void measure(const char* name, float (*kernel)(void), double flops_per_instruction) {
    measure_rounds(name, kernel, flops_per_instruction * CHAINS * ROUNDS);
}

static void measure_rounds(const char* name, float (*kernel)(void), double flops_per_round) {
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
    printf("%s %d %.1f\n", name, threads, threads * flops_per_round / seconds / 1e9);
}

int main(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) measure("avx2_fma_f32", fma_avx2, 16);
    if (__builtin_cpu_supports("avx512f")) measure("avx512_fma_f32", fma_avx512, 32);
    if (__builtin_cpu_supports("avx512bf16")) measure("avx512_bf16_dot", dot_bf16, 64);
#if defined(__linux__) && defined(__x86_64__)
    if (__builtin_cpu_supports("amx-bf16") && amx_granted()) measure_rounds("amx_bf16_tile", dot_amx, 4.0 * 16 * 16 * 32 * 2 * AMX_ROUNDS);
#endif
    return 0;
}

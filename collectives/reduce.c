/*
 * Element-wise reductions (the inner loop of every reducing collective) and
 * the low-precision conversions they need.
 *
 * Layout: for each (dtype, op) there is a portable kernel in two shapes,
 * dst = a op b (three distinct buffers) and dst = dst op b (in place), both
 * restrict-qualified so the compiler vectorises them without run-time alias
 * checks. mc_reduce picks the shape from how the caller's pointers alias; the
 * rare shapes that fit neither (dst == a == b, or buffers not aligned to
 * their element size) go through small aligned stack buffers.
 *
 * Floating point follows mooncake.h: compute in binary32 (binary64 for
 * float64), round back to the element type to nearest-even. The conversions
 * are the branch-free bit manipulations PyTorch uses (c10/util/Half.h,
 * BFloat16.h, Float8_e4m3fn.h, Float8_e5m2.h), restated with adds and
 * integer operations only, so that floating-point contraction (FMA) under
 * any -march cannot change a result. MIN/MAX never round: they select one
 * input by comparing order-preserving integer keys of the bit patterns,
 * which also gives -0 < +0 and makes them exactly commutative.
 *
 * On x86 the fp16/bf16/f32/f64 SUM and PROD (the common gradient types)
 * have AVX2 (F16C) kernels chosen at run time; they give the same bits as the
 * portable kernels (the tests compare both).
 */
#include "reduce.h"

#include <stdatomic.h>
#include <string.h>

#include "mc_log.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define MC_REDUCE_X86 1
#else
#define MC_REDUCE_X86 0
#endif

/* ------------------------------------------------------------------------ */
/* Scalar conversions                                                       */
/* ------------------------------------------------------------------------ */

static inline uint32_t mc_f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static inline float mc_u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/*
 * Branch-free select. The conversions compute every case and pick one with
 * masks rather than `?:`: with -ftrapping-math (gcc's default) a compiler
 * may not compute a floating-point operation the source only needs on one
 * side of a `?:`, so it turns the select into branches and the loop is not
 * vectorised. Masks make every operation unconditional.
 */
static inline uint32_t mc_sel(int cond, uint32_t x, uint32_t y)
{
    uint32_t m = 0u - (uint32_t)(cond != 0);
    return (x & m) | (y & ~m);
}

/* binary16 -> binary32, exact. Subnormals: 0.5 + m*2^-24 - 0.5 is exact.
 * NaNs keep sign and payload and come out quiet (as x86 and PyTorch do). */
static inline float mc_h2f(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t a = h & 0x7fffu;
    uint32_t norm = (a << 13) + (112u << 23); /* rebias 15 -> 127 */
    uint32_t sub = mc_f2u(mc_u2f((126u << 23) | (a & 0x3ffu)) - 0.5f);
    uint32_t infnan = 0x7f800000u | ((a & 0x3ffu) << 13);
    infnan |= mc_sel(a > 0x7c00u, 0x00400000u, 0u);
    uint32_t r = mc_sel(a < 0x400u, sub, norm);
    r = mc_sel(a >= 0x7c00u, infnan, r);
    return mc_u2f(sign | r);
}

/* binary32 -> binary16, round to nearest even; >= 65520 becomes inf, NaN
 * becomes sign|0x7e00 (PyTorch's fp16_ieee_from_fp32_value). */
static inline uint16_t mc_f2h(float f)
{
    uint32_t x = mc_f2u(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t a = x & 0x7fffffffu;
    /* normal results: rebias, then round the 13 dropped bits (ties to even;
     * a carry into the exponent is the right answer) */
    uint32_t n = a - (112u << 23);
    n = (n + 0xfffu + ((n >> 13) & 1u)) >> 13;
    /* subnormal results (|f| < 2^-14): adding 0.5 makes the FPU round at
     * the fp16 subnormal spacing 2^-24. The operand is clamped so the add
     * is exact-range for every input (no inf/NaN through the FPU here). */
    uint32_t s =
        mc_f2u(mc_u2f(mc_sel(a < (113u << 23), a, 0u)) + 0.5f) - (126u << 23);
    uint32_t r = mc_sel(a < (113u << 23), s, n);
    r = mc_sel(a >= 0x477ff000u, 0x7c00u, r); /* 65520: rounds past 65504 */
    r = mc_sel(a > 0x7f800000u, 0x7e00u, r);
    return (uint16_t)(sign | r);
}

static inline float mc_bf2f(uint16_t h)
{
    return mc_u2f((uint32_t)h << 16);
}

/* Round to nearest even on the upper half; overflow carries into inf.
 * NaN becomes the quiet NaN 0x7fc0 (PyTorch's round_to_nearest_even). */
static inline uint16_t mc_f2bf(float f)
{
    uint32_t x = mc_f2u(f);
    uint32_t r = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    r = mc_sel((x & 0x7fffffffu) > 0x7f800000u, 0x7fc0u, r);
    return (uint16_t)r;
}

/* e4m3fn: bias 7, no infinities, S.1111.111 is NaN, max finite 448. */
static inline float mc_e4m3_2f(uint8_t v)
{
    uint32_t sign = (uint32_t)(v & 0x80u) << 24;
    uint32_t a = v & 0x7fu;
    uint32_t norm = (a << 20) + (120u << 23); /* rebias 7 -> 127 */
    /* subnormal m*2^-9 = 2^-6*(1 + m/8) - 2^-6, exact */
    uint32_t sub = mc_f2u(mc_u2f((121u << 23) | ((a & 7u) << 20)) - 0x1p-6f);
    uint32_t r = mc_sel(a < 8u, sub, norm);
    r = mc_sel(a == 0x7fu, 0x7fc00000u, r);
    return mc_u2f(sign | r);
}

/* PyTorch's fp8e4m3fn_from_fp32_value: RNE; anything that rounds above 448
 * (including inf) and NaN become sign|0x7f. */
static inline uint8_t mc_f2e4m3(float f)
{
    uint32_t x = mc_f2u(f);
    uint32_t sign = (x >> 24) & 0x80u;
    uint32_t a = x & 0x7fffffffu;
    uint32_t n = a - (120u << 23);
    n = (n + 0x7ffffu + ((n >> 20) & 1u)) >> 20;
    /* |f| < 2^-6: adding 2^14 rounds at the subnormal spacing 2^-9 */
    int sub = a < (121u << 23);
    uint32_t s = mc_f2u(mc_u2f(mc_sel(sub, a, 0u)) + 0x1p14f) - (141u << 23);
    uint32_t r = mc_sel(sub, s, n);
    r = mc_sel(a >= (1087u << 20), 0x7fu, r); /* >= 480: past the NaN code */
    return (uint8_t)(sign | r);
}

/* e5m2 is the upper byte of binary16. */
static inline float mc_e5m2_2f(uint8_t v)
{
    return mc_h2f((uint16_t)(v << 8));
}

/* PyTorch's fp8e5m2_from_fp32_value: RNE, >= 61440 rounds to inf, NaN
 * becomes sign|0x7f. */
static inline uint8_t mc_f2e5m2(float f)
{
    uint32_t x = mc_f2u(f);
    uint32_t sign = (x >> 24) & 0x80u;
    uint32_t a = x & 0x7fffffffu;
    uint32_t n = a - (112u << 23);
    n = (n + 0xfffffu + ((n >> 21) & 1u)) >> 21;
    /* |f| < 2^-14: adding 2^7 rounds at the subnormal spacing 2^-16 */
    int sub = a < (113u << 23);
    uint32_t s = mc_f2u(mc_u2f(mc_sel(sub, a, 0u)) + 0x1p7f) - (134u << 23);
    uint32_t r = mc_sel(sub, s, n);
    r = mc_sel(a >= (143u << 23), 0x7cu, r); /* >= 65536 (also inf) */
    r = mc_sel(a > 0x7f800000u, 0x7fu, r);
    return (uint8_t)(sign | r);
}

float mc_fp16_to_float(uint16_t h)
{
    return mc_h2f(h);
}
uint16_t mc_float_to_fp16(float f)
{
    return mc_f2h(f);
}
float mc_bf16_to_float(uint16_t h)
{
    return mc_bf2f(h);
}
uint16_t mc_float_to_bf16(float f)
{
    return mc_f2bf(f);
}
float mc_fp8e4m3_to_float(uint8_t v)
{
    return mc_e4m3_2f(v);
}
uint8_t mc_float_to_fp8e4m3(float f)
{
    return mc_f2e4m3(f);
}
float mc_fp8e5m2_to_float(uint8_t v)
{
    return mc_e5m2_2f(v);
}
uint8_t mc_float_to_fp8e5m2(float f)
{
    return mc_f2e5m2(f);
}

/* ------------------------------------------------------------------------ */
/* Element operations                                                       */
/* ------------------------------------------------------------------------ */

/*
 * Floating MIN/MAX on bit patterns. key() maps sign-magnitude to an
 * unsigned order (-NaN.. -inf .. -0 < +0 .. +inf ..), so comparing keys
 * orders values and puts -0 below +0 (IEEE 754-2019 minimum/maximum).
 * Equal keys mean equal bits. A NaN input wins; of two NaNs the larger bit
 * pattern wins, so the choice does not depend on operand order.
 */
#define MC_DEF_FSEL(tag, U, SIGN, THR)                                         \
    static inline U mc_key_##tag(U v)                                          \
    {                                                                          \
        U neg = (U)(0u - (U)(v >> (sizeof(U) * 8 - 1)));                       \
        return (U)(v ^ (U)(neg | (U)(SIGN)));                                  \
    }                                                                          \
    static inline U mc_fsel_##tag(U x, U y, int want_max)                      \
    {                                                                          \
        int lt = mc_key_##tag(x) < mc_key_##tag(y);                            \
        U r = (lt ^ want_max) ? x : y;                                         \
        int nx = (U)(x & (U) ~(U)(SIGN)) > (U)(THR);                           \
        int ny = (U)(y & (U) ~(U)(SIGN)) > (U)(THR);                           \
        U nr = (nx & ny) ? (x > y ? x : y) : (nx ? x : y);                     \
        return (nx | ny) ? nr : r;                                             \
    }

MC_DEF_FSEL(f64, uint64_t, 0x8000000000000000ull, 0x7ff0000000000000ull)
MC_DEF_FSEL(f32, uint32_t, 0x80000000u, 0x7f800000u)
MC_DEF_FSEL(f16, uint16_t, 0x8000u, 0x7c00u)
MC_DEF_FSEL(bf16, uint16_t, 0x8000u, 0x7f80u)
MC_DEF_FSEL(e4m3, uint8_t, 0x80u, 0x7eu)
MC_DEF_FSEL(e5m2, uint8_t, 0x80u, 0x7cu)

/* ------------------------------------------------------------------------ */
/* Portable kernels                                                         */
/* ------------------------------------------------------------------------ */

typedef void (*mc_k3_fn)(void *dst, const void *a, const void *b, size_t n);
typedef void (*mc_k2_fn)(void *dst, const void *b, size_t n);

/* One kernel pair: EXPR combines x (from a, or dst in place) and y. */
#define MC_DEF_KERNEL(name, T, EXPR)                                           \
    static void name##_k3(void *restrict dst_, const void *restrict a_,        \
                          const void *restrict b_, size_t n)                   \
    {                                                                          \
        T *restrict d = dst_;                                                  \
        const T *restrict pa = a_;                                             \
        const T *restrict pb = b_;                                             \
        for (size_t i = 0; i < n; i++) {                                       \
            T x = pa[i], y = pb[i];                                            \
            d[i] = (T)(EXPR);                                                  \
        }                                                                      \
    }                                                                          \
    static void name##_k2(void *restrict dst_, const void *restrict b_,        \
                          size_t n)                                            \
    {                                                                          \
        T *restrict d = dst_;                                                  \
        const T *restrict pb = b_;                                             \
        for (size_t i = 0; i < n; i++) {                                       \
            T x = d[i], y = pb[i];                                             \
            d[i] = (T)(EXPR);                                                  \
        }                                                                      \
    }

/* Integers: SUM, PROD and the bitwise ops are the same bits for signed and
 * unsigned, so both use the unsigned kernels (wrapping, no UB). Products
 * of narrow types go through unsigned int so promotion to int cannot
 * overflow. */
#define MC_DEF_INT(W, MT)                                                      \
    MC_DEF_KERNEL(mc_u##W##_sum, uint##W##_t, x + y)                           \
    MC_DEF_KERNEL(mc_u##W##_prod, uint##W##_t, (MT)x *(MT)y)                   \
    MC_DEF_KERNEL(mc_u##W##_band, uint##W##_t, x &y)                           \
    MC_DEF_KERNEL(mc_u##W##_bor, uint##W##_t, x | y)                           \
    MC_DEF_KERNEL(mc_u##W##_bxor, uint##W##_t, x ^ y)                          \
    MC_DEF_KERNEL(mc_u##W##_min, uint##W##_t, x < y ? x : y)                   \
    MC_DEF_KERNEL(mc_u##W##_max, uint##W##_t, x > y ? x : y)                   \
    MC_DEF_KERNEL(mc_s##W##_min, int##W##_t, x < y ? x : y)                    \
    MC_DEF_KERNEL(mc_s##W##_max, int##W##_t, x > y ? x : y)

MC_DEF_INT(8, unsigned)
MC_DEF_INT(16, unsigned)
MC_DEF_INT(32, uint32_t)
MC_DEF_INT(64, uint64_t)

/* bool: any non-zero byte is true; results are 0 or 1. */
MC_DEF_KERNEL(mc_bool_or, uint8_t, (x | y) != 0)
MC_DEF_KERNEL(mc_bool_and, uint8_t, (x != 0) & (y != 0))
MC_DEF_KERNEL(mc_bool_xor, uint8_t, (x != 0) ^ (y != 0))

/* SUM and PROD give one NaN whatever the inputs' NaNs were: x86 returns
 * the first operand's NaN (sign and payload), so a op b and b op a, or a
 * vector body and a scalar tail, or two CPUs, could differ in the bits of
 * a NaN result, and guarantee 2 wants the same bits on every rank.
 * The narrow types compute in binary32 and narrow a canonical NaN (a
 * result that overflows keeps its sign, as torch's conversions give).
 * MIN/MAX pick among the inputs by bits (mc_fsel_*), already symmetric. */
static inline float mc_cnan_f32(float r)
{
    /* integer form, as the conversions: it keeps their loops vectorised */
    uint32_t u = mc_f2u(r);
    return mc_u2f(mc_sel((u & 0x7fffffffu) > 0x7f800000u, 0x7fc00000u, u));
}
/* the plain float kernels: a compare and a blend per vector */
static inline float mc_qnan_f32(float r)
{
    return r == r ? r : __builtin_nanf("");
}
static inline double mc_qnan_f64(double r)
{
    return r == r ? r : __builtin_nan("");
}

MC_DEF_KERNEL(mc_f32_sum, float, mc_qnan_f32(x + y))
MC_DEF_KERNEL(mc_f32_prod, float, mc_qnan_f32((x) * (y)))
MC_DEF_KERNEL(mc_f32_min, uint32_t, mc_fsel_f32(x, y, 0))
MC_DEF_KERNEL(mc_f32_max, uint32_t, mc_fsel_f32(x, y, 1))
MC_DEF_KERNEL(mc_f64_sum, double, mc_qnan_f64(x + y))
MC_DEF_KERNEL(mc_f64_prod, double, mc_qnan_f64((x) * (y)))
MC_DEF_KERNEL(mc_f64_min, uint64_t, mc_fsel_f64(x, y, 0))
MC_DEF_KERNEL(mc_f64_max, uint64_t, mc_fsel_f64(x, y, 1))

#define MC_DEF_LOWP(tag, T, TOF, FROMF)                                        \
    MC_DEF_KERNEL(mc_##tag##_sum, T, FROMF(mc_cnan_f32(TOF(x) + TOF(y))))      \
    MC_DEF_KERNEL(mc_##tag##_prod, T, FROMF(mc_cnan_f32(TOF(x) * TOF(y))))     \
    MC_DEF_KERNEL(mc_##tag##_min, T, mc_fsel_##tag(x, y, 0))                   \
    MC_DEF_KERNEL(mc_##tag##_max, T, mc_fsel_##tag(x, y, 1))

MC_DEF_LOWP(f16, uint16_t, mc_h2f, mc_f2h)
MC_DEF_LOWP(bf16, uint16_t, mc_bf2f, mc_f2bf)
MC_DEF_LOWP(e4m3, uint8_t, mc_e4m3_2f, mc_f2e4m3)
MC_DEF_LOWP(e5m2, uint8_t, mc_e5m2_2f, mc_f2e5m2)

typedef struct mc_kern {
    mc_k3_fn k3;
    mc_k2_fn k2;
} mc_kern_t;

#define MC_K(name)                                                             \
    {                                                                          \
        name##_k3, name##_k2                                                   \
    }
#define MC_INT_ROW(W, S)                                                       \
    {                                                                          \
        [MC_SUM] = MC_K(mc_u##W##_sum), [MC_PROD] = MC_K(mc_u##W##_prod),      \
        [MC_MIN] = MC_K(mc_##S##W##_min), [MC_MAX] = MC_K(mc_##S##W##_max),    \
        [MC_AVG] = MC_K(mc_u##W##_sum), [MC_BAND] = MC_K(mc_u##W##_band),      \
        [MC_BOR] = MC_K(mc_u##W##_bor), [MC_BXOR] = MC_K(mc_u##W##_bxor),      \
    }
#define MC_FLOAT_ROW(tag)                                                      \
    {                                                                          \
        [MC_SUM] = MC_K(mc_##tag##_sum), [MC_PROD] = MC_K(mc_##tag##_prod),    \
        [MC_MIN] = MC_K(mc_##tag##_min), [MC_MAX] = MC_K(mc_##tag##_max),      \
        [MC_AVG] = MC_K(mc_##tag##_sum),                                       \
    }

/* NULL entries are the combinations mc_redop_check rejects. AVG reduces as
 * SUM; mc_reduce_div finishes it. */
static const mc_kern_t mc_kerns[MC_DTYPE_COUNT][MC_REDOP_COUNT] = {
    [MC_INT8] = MC_INT_ROW(8, s),
    [MC_UINT8] = MC_INT_ROW(8, u),
    [MC_INT16] = MC_INT_ROW(16, s),
    [MC_UINT16] = MC_INT_ROW(16, u),
    [MC_INT32] = MC_INT_ROW(32, s),
    [MC_UINT32] = MC_INT_ROW(32, u),
    [MC_INT64] = MC_INT_ROW(64, s),
    [MC_UINT64] = MC_INT_ROW(64, u),
    [MC_BOOL] =
        {
            [MC_SUM] = MC_K(mc_bool_or),
            [MC_PROD] = MC_K(mc_bool_and),
            [MC_MIN] = MC_K(mc_bool_and),
            [MC_MAX] = MC_K(mc_bool_or),
            [MC_BAND] = MC_K(mc_bool_and),
            [MC_BOR] = MC_K(mc_bool_or),
            [MC_BXOR] = MC_K(mc_bool_xor),
        },
    [MC_FLOAT16] = MC_FLOAT_ROW(f16),
    [MC_BFLOAT16] = MC_FLOAT_ROW(bf16),
    [MC_FLOAT32] = MC_FLOAT_ROW(f32),
    [MC_FLOAT64] = MC_FLOAT_ROW(f64),
    [MC_FLOAT8_E4M3] = MC_FLOAT_ROW(e4m3),
    [MC_FLOAT8_E5M2] = MC_FLOAT_ROW(e5m2),
};

/* ------------------------------------------------------------------------ */
/* AVX2/F16C kernels for fp16, bf16, f32 and f64 SUM/PROD                   */
/* ------------------------------------------------------------------------ */

/* Cleared only by the tests (mc_reduce_simd_enable) to compare paths. */
static atomic_int mc_simd_allowed = 1;

#if MC_REDUCE_X86
/*
 * Same arithmetic as the portable kernels: exact widening, one binary32
 * operation (no FMA: "fma" is deliberately not in the target list), RNE
 * narrowing. vcvtps2ph keeps NaN payloads, so NaN lanes are rewritten to
 * 0x7e00, the portable kernels' one NaN (mc_f2h of mc_cnan_f32). Every
 * vector is loaded before its lanes are stored, so dst may alias a or b
 * exactly. The tail (< 16 elements) uses
 * the scalar conversions.
 */
#define MC_DEF_F16_AVX(name, VOP, SOP)                                         \
    __attribute__((target("avx2,f16c"))) static void name(                     \
        void *dst, const void *a, const void *b, size_t n)                     \
    {                                                                          \
        uint16_t *d = dst;                                                     \
        const uint16_t *pa = a, *pb = b;                                       \
        const __m128i absm = _mm_set1_epi16(0x7fff);                           \
        const __m128i inf = _mm_set1_epi16(0x7c00);                            \
        const __m128i qnan = _mm_set1_epi16(0x7e00);                           \
        size_t i = 0;                                                          \
        for (; i + 16 <= n; i += 16) {                                         \
            __m128i hr[2];                                                     \
            for (int k = 0; k < 2; k++) {                                      \
                __m256 x = _mm256_cvtph_ps(                                    \
                    _mm_loadu_si128((const __m128i *)(pa + i + 8 * k)));       \
                __m256 y = _mm256_cvtph_ps(                                    \
                    _mm_loadu_si128((const __m128i *)(pb + i + 8 * k)));       \
                __m128i h =                                                    \
                    _mm256_cvtps_ph(VOP(x, y), _MM_FROUND_TO_NEAREST_INT);     \
                __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(h, absm), inf);    \
                hr[k] = _mm_blendv_epi8(h, qnan, nan);                         \
            }                                                                  \
            _mm_storeu_si128((__m128i *)(d + i), hr[0]);                       \
            _mm_storeu_si128((__m128i *)(d + i + 8), hr[1]);                   \
        }                                                                      \
        for (; i < n; i++)                                                     \
            d[i] = mc_f2h(mc_cnan_f32(mc_h2f(pa[i]) SOP mc_h2f(pb[i])));       \
    }

/*
 * bf16 widens by interleaving with zero halves: unpacklo/hi work within
 * each 128-bit lane, so 16 inputs become two vectors of 8 floats in the
 * order (0-3, 8-11) and (4-7, 12-15); packus_epi32 interleaves the same
 * way back, so no cross-lane permute is needed. Narrowing is the integer
 * RNE of mc_f2bf.
 */
#define MC_BF16_ROUND(r)                                                       \
    _mm256_blendv_epi8(                                                        \
        _mm256_srli_epi32(                                                     \
            _mm256_add_epi32(                                                  \
                _mm256_castps_si256(r),                                        \
                _mm256_add_epi32(                                              \
                    bias,                                                      \
                    _mm256_and_si256(                                          \
                        _mm256_srli_epi32(_mm256_castps_si256(r), 16), one))), \
            16),                                                               \
        qnan, _mm256_castps_si256(_mm256_cmp_ps(r, r, _CMP_UNORD_Q)))

#define MC_DEF_BF16_AVX(name, VOP, SOP)                                        \
    __attribute__((target("avx2,f16c"))) static void name(                     \
        void *dst, const void *a, const void *b, size_t n)                     \
    {                                                                          \
        uint16_t *d = dst;                                                     \
        const uint16_t *pa = a, *pb = b;                                       \
        const __m256i zero = _mm256_setzero_si256();                           \
        const __m256i bias = _mm256_set1_epi32(0x7fff);                        \
        const __m256i one = _mm256_set1_epi32(1);                              \
        const __m256i qnan = _mm256_set1_epi32(0x7fc0);                        \
        size_t i = 0;                                                          \
        for (; i + 16 <= n; i += 16) {                                         \
            __m256i x = _mm256_loadu_si256((const __m256i *)(pa + i));         \
            __m256i y = _mm256_loadu_si256((const __m256i *)(pb + i));         \
            __m256 rl =                                                        \
                VOP(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, x)),       \
                    _mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, y)));      \
            __m256 rh =                                                        \
                VOP(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, x)),       \
                    _mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, y)));      \
            __m256i out =                                                      \
                _mm256_packus_epi32(MC_BF16_ROUND(rl), MC_BF16_ROUND(rh));     \
            _mm256_storeu_si256((__m256i *)(d + i), out);                      \
        }                                                                      \
        for (; i < n; i++)                                                     \
            d[i] = mc_f2bf(mc_bf2f(pa[i]) SOP mc_bf2f(pb[i]));                 \
    }

MC_DEF_F16_AVX(mc_f16_sum_avx2, _mm256_add_ps, +)

/* fp16 x / n in place (AVG's division: mc_reduce_div), as the portable
 * mc_f16_div: exact widening, one binary32 division, RNE narrowing; a NaN
 * lane becomes sign | 0x7e00 as mc_f2h makes it (vcvtps2ph keeps the
 * payload). */
__attribute__((target("avx2,f16c"))) static void
mc_f16_div_avx2(void *p, const void *q, size_t count, uint64_t n)
{
    uint16_t *d = p;
    const uint16_t *sv = q;
    const float fn = (float)n;
    const __m256 vn = _mm256_set1_ps(fn);
    const __m128i absm = _mm_set1_epi16(0x7fff);
    const __m128i sgn = _mm_set1_epi16((short)0x8000);
    const __m128i inf = _mm_set1_epi16(0x7c00);
    const __m128i qnan = _mm_set1_epi16(0x7e00);
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256 x = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sv + i)));
        __m128i h = _mm256_cvtps_ph(_mm256_div_ps(x, vn),
                                    _MM_FROUND_TO_NEAREST_INT);
        __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(h, absm), inf);
        __m128i cn = _mm_or_si128(_mm_and_si128(h, sgn), qnan);
        _mm_storeu_si128((__m128i *)(d + i), _mm_blendv_epi8(h, cn, nan));
    }
    for (; i < count; i++)
        d[i] = mc_f2h(mc_h2f(sv[i]) / fn);
}
MC_DEF_F16_AVX(mc_f16_prod_avx2, _mm256_mul_ps, *)
MC_DEF_BF16_AVX(mc_bf16_sum_avx2, _mm256_add_ps, +)
MC_DEF_BF16_AVX(mc_bf16_prod_avx2, _mm256_mul_ps, *)

/* binary32/64 SUM and PROD with the portable kernels' one NaN: without
 * AVX the compare and select cost SSE2 four more instructions a vector
 * (half the speed in cache); here one compare and one blend. */
#define MC_DEF_FP_AVX(name, T, V, LD, ST, VOP, CMP, BLEND, QNAN, SOP, QN,     \
                      W)                                                       \
    __attribute__((target("avx2"))) static void name(                          \
        void *dst, const void *a, const void *b, size_t n)                     \
    {                                                                          \
        T *d = dst;                                                            \
        const T *pa = a, *pb = b;                                              \
        const V q = QNAN;                                                      \
        size_t i = 0;                                                          \
        for (; i + W <= n; i += W) {                                           \
            V r = VOP(LD(pa + i), LD(pb + i));                                 \
            ST(d + i, BLEND(r, q, CMP(r, r, _CMP_UNORD_Q)));                   \
        }                                                                      \
        for (; i < n; i++)                                                     \
            d[i] = QN(pa[i] SOP pb[i]);                                        \
    }

#define MC_QNAN_PS _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000))
#define MC_QNAN_PD                                                             \
    _mm256_castsi256_pd(_mm256_set1_epi64x(0x7ff8000000000000ll))
MC_DEF_FP_AVX(mc_f32_sum_avx2, float, __m256, _mm256_loadu_ps,
              _mm256_storeu_ps, _mm256_add_ps, _mm256_cmp_ps,
              _mm256_blendv_ps, MC_QNAN_PS, +, mc_qnan_f32, 8)
MC_DEF_FP_AVX(mc_f32_prod_avx2, float, __m256, _mm256_loadu_ps,
              _mm256_storeu_ps, _mm256_mul_ps, _mm256_cmp_ps,
              _mm256_blendv_ps, MC_QNAN_PS, *, mc_qnan_f32, 8)
MC_DEF_FP_AVX(mc_f64_sum_avx2, double, __m256d, _mm256_loadu_pd,
              _mm256_storeu_pd, _mm256_add_pd, _mm256_cmp_pd,
              _mm256_blendv_pd, MC_QNAN_PD, +, mc_qnan_f64, 4)
MC_DEF_FP_AVX(mc_f64_prod_avx2, double, __m256d, _mm256_loadu_pd,
              _mm256_storeu_pd, _mm256_mul_pd, _mm256_cmp_pd,
              _mm256_blendv_pd, MC_QNAN_PD, *, mc_qnan_f64, 4)

/* __builtin_cpu_supports covers avx2 (and the OS saving ymm state) but
 * clang 14 does not know "f16c", so that bit comes from cpuid leaf 1.
 * cpuid can trap to a hypervisor: ask once and cache (-1 = not yet). */
static atomic_int mc_cpu_ok = -1;

static int mc_cpu_has_avx2_f16c(void)
{
    int ok = atomic_load_explicit(&mc_cpu_ok, memory_order_relaxed);
    if (ok >= 0) return ok;
    unsigned eax, ebx, ecx, edx;
    __builtin_cpu_init();
    ok = __builtin_cpu_supports("avx2") &&
         __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
    atomic_store_explicit(&mc_cpu_ok, ok ? 1 : 0, memory_order_relaxed);
    return ok;
}

static mc_k3_fn mc_simd_kernel(mc_dtype_t dtype, mc_redop_t op)
{
    if (!atomic_load_explicit(&mc_simd_allowed, memory_order_relaxed))
        return NULL;
    if (op != MC_SUM && op != MC_PROD) return NULL;
    if (dtype != MC_FLOAT16 && dtype != MC_BFLOAT16 && dtype != MC_FLOAT32 &&
        dtype != MC_FLOAT64)
        return NULL;
    if (!mc_cpu_has_avx2_f16c()) return NULL;
    if (dtype == MC_FLOAT32)
        return op == MC_SUM ? mc_f32_sum_avx2 : mc_f32_prod_avx2;
    if (dtype == MC_FLOAT64)
        return op == MC_SUM ? mc_f64_sum_avx2 : mc_f64_prod_avx2;
    if (dtype == MC_FLOAT16)
        return op == MC_SUM ? mc_f16_sum_avx2 : mc_f16_prod_avx2;
    return op == MC_SUM ? mc_bf16_sum_avx2 : mc_bf16_prod_avx2;
}
#else
static mc_k3_fn mc_simd_kernel(mc_dtype_t dtype, mc_redop_t op)
{
    (void)dtype;
    (void)op;
    return NULL;
}
#endif

/*
 * Test hook, not part of reduce.h: enable (1) or disable (0) the run-time
 * selected SIMD kernels; returns the previous setting. Lets the tests run
 * the portable kernels on a machine that has AVX2 and compare the bits.
 */
int mc_reduce_simd_enable(int enable)
{
    return atomic_exchange(&mc_simd_allowed, enable ? 1 : 0);
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                 */
/* ------------------------------------------------------------------------ */

mc_status_t mc_redop_check(mc_dtype_t dtype, mc_redop_t op)
{
    if ((unsigned)dtype >= MC_DTYPE_COUNT)
        return mc_err(MC_ERR_INVALID_ARG, "invalid dtype %d", (int)dtype);
    if ((unsigned)op >= MC_REDOP_COUNT)
        return mc_err(MC_ERR_INVALID_ARG, "invalid reduction op %d", (int)op);
    if (!mc_kerns[dtype][op].k3) {
        const char *why = dtype == MC_BOOL
                              ? "bool has no average"
                              : "bitwise ops need an integer or bool dtype";
        return mc_err(MC_ERR_INVALID_ARG,
                      "reduction op %s is not defined for dtype %s (%s)",
                      mc_redop_name(op), mc_dtype_name(dtype), why);
    }
    return MC_OK;
}

enum { MC_STAGE_BYTES = 2048 };

/* Through aligned stack buffers, one chunk at a time: for buffers that are
 * not aligned to their element size, and for dst == a == b (which neither
 * restrict shape allows). Each chunk is fully read before it is written,
 * so exact aliasing is fine. */
static void mc_reduce_staged(mc_k3_fn k3, void *dst, const void *a,
                             const void *b, size_t count, size_t es)
{
    _Alignas(64) unsigned char ta[MC_STAGE_BYTES];
    _Alignas(64) unsigned char tb[MC_STAGE_BYTES];
    _Alignas(64) unsigned char td[MC_STAGE_BYTES];
    size_t per = MC_STAGE_BYTES / es;
    for (size_t off = 0; off < count; off += per) {
        size_t m = count - off < per ? count - off : per;
        memcpy(ta, (const unsigned char *)a + off * es, m * es);
        memcpy(tb, (const unsigned char *)b + off * es, m * es);
        k3(td, ta, tb, m);
        memcpy((unsigned char *)dst + off * es, td, m * es);
    }
}

void mc_reduce(void *dst, const void *a, const void *b, size_t count,
               mc_dtype_t dtype, mc_redop_t op)
{
    if (count == 0) return;
    if (mc_redop_check(dtype, op) != MC_OK) {
        /* callers validate first; reaching here is a bug upstream */
        MC_LOG(MC_LOG_ERROR, "mc_reduce: %s", mc_last_error());
        return;
    }
    if (op == MC_AVG) op = MC_SUM;
    const mc_kern_t *k = &mc_kerns[dtype][op];
    size_t es = mc_dtype_size(dtype);
    int misaligned =
        (((uintptr_t)dst | (uintptr_t)a | (uintptr_t)b) & (es - 1)) != 0;
    mc_k3_fn simd = mc_simd_kernel(dtype, op);

    if (misaligned) {
        mc_reduce_staged(simd ? simd : k->k3, dst, a, b, count, es);
    } else if (simd) {
        simd(dst, a, b, count); /* handles exact aliasing itself */
    } else if (dst == a && a == b) {
        mc_reduce_staged(k->k3, dst, a, b, count, es);
    } else if (dst == a) {
        k->k2(dst, b, count);
    } else if (dst == b) {
        k->k2(dst, a, count); /* b op a: the ops are commutative */
    } else {
        k->k3(dst, a, b, count);
    }
}

/* ------------------------------------------------------------------------ */
/* AVG finalisation                                                         */
/* ------------------------------------------------------------------------ */

/* Signed: divide magnitudes so that any n (even > INT64_MAX) truncates
 * toward zero without overflow. */
#define MC_DEF_SDIV(W)                                                         \
    static void mc_s##W##_div(void *p, const void *src, size_t count,          \
                              uint64_t n)                                      \
    {                                                                          \
        int##W##_t *d = p;                                                     \
        const int##W##_t *sv = src;                                            \
        for (size_t i = 0; i < count; i++) {                                   \
            int64_t x = sv[i];                                                 \
            uint64_t mag = x < 0 ? 0u - (uint64_t)x : (uint64_t)x;             \
            uint64_t q = mag / n;                                              \
            d[i] = (int##W##_t)(x < 0 ? (int64_t)(0u - q) : (int64_t)q);       \
        }                                                                      \
    }
#define MC_DEF_UDIV(W)                                                         \
    static void mc_u##W##_div(void *p, const void *q, size_t count,            \
                              uint64_t n)                                      \
    {                                                                          \
        uint##W##_t *d = p;                                                    \
        const uint##W##_t *sv = q;                                             \
        for (size_t i = 0; i < count; i++)                                     \
            d[i] = (uint##W##_t)((uint64_t)sv[i] / n);                         \
    }
#define MC_DEF_FDIV(tag, T, TOF, FROMF, FT)                                    \
    static void mc_##tag##_div(void *p, const void *q, size_t count,           \
                               uint64_t n)                                     \
    {                                                                          \
        T *d = p;                                                              \
        const T *sv = q;                                                       \
        FT fn = (FT)n;                                                         \
        for (size_t i = 0; i < count; i++)                                     \
            d[i] = FROMF(TOF(sv[i]) / fn);                                     \
    }
#define MC_ID(x) (x)

MC_DEF_SDIV(8)
MC_DEF_SDIV(16)
MC_DEF_SDIV(32)
MC_DEF_SDIV(64)
MC_DEF_UDIV(8)
MC_DEF_UDIV(16)
MC_DEF_UDIV(32)
MC_DEF_UDIV(64)
MC_DEF_FDIV(f16, uint16_t, mc_h2f, mc_f2h, float)
MC_DEF_FDIV(bf16, uint16_t, mc_bf2f, mc_f2bf, float)
MC_DEF_FDIV(e4m3, uint8_t, mc_e4m3_2f, mc_f2e4m3, float)
MC_DEF_FDIV(e5m2, uint8_t, mc_e5m2_2f, mc_f2e5m2, float)
MC_DEF_FDIV(f32, float, MC_ID, MC_ID, float)
MC_DEF_FDIV(f64, double, MC_ID, MC_ID, double)

/* One-byte dtypes (fp8, int8, uint8): the 256 quotients first, computed
 * by the kernel above itself (so the result is the same bit for bit),
 * then one lookup per element; fp8's widen-divide-round per element costs
 * several times that. Short vectors keep the direct loop. */
#define MC_DIV_TAB_MIN 1024
#define MC_DEF_TDIV(tag)                                                       \
    static void mc_##tag##_div_tab(void *p, const void *q, size_t count,       \
                                   uint64_t n)                                 \
    {                                                                          \
        if (count < MC_DIV_TAB_MIN) {                                          \
            mc_##tag##_div(p, q, count, n);                                    \
            return;                                                            \
        }                                                                      \
        uint8_t v[256], t[256];                                                \
        for (int i = 0; i < 256; i++)                                          \
            v[i] = (uint8_t)i;                                                 \
        mc_##tag##_div(t, v, 256, n);                                          \
        uint8_t *d = p;                                                        \
        const uint8_t *sv = q;                                                 \
        for (size_t i = 0; i < count; i++)                                     \
            d[i] = t[sv[i]];                                                   \
    }
MC_DEF_TDIV(e4m3)
MC_DEF_TDIV(e5m2)
MC_DEF_TDIV(s8)
MC_DEF_TDIV(u8)

/* bool has no AVG (mc_redop_check); defined anyway: (x != 0) / n. */
static void mc_bool_div(void *p, const void *q, size_t count, uint64_t n)
{
    uint8_t *d = p;
    const uint8_t *sv = q;
    for (size_t i = 0; i < count; i++)
        d[i] = (uint8_t)(sv[i] != 0 && n == 1);
}

/* dst[i] = src[i] / n; src may be dst itself */
typedef void (*mc_div_fn)(void *dst, const void *src, size_t count,
                          uint64_t n);

static const mc_div_fn mc_divs[MC_DTYPE_COUNT] = {
    [MC_INT8] = mc_s8_div_tab,      [MC_UINT8] = mc_u8_div_tab,
    [MC_INT16] = mc_s16_div,        [MC_UINT16] = mc_u16_div,
    [MC_INT32] = mc_s32_div,        [MC_UINT32] = mc_u32_div,
    [MC_INT64] = mc_s64_div,        [MC_UINT64] = mc_u64_div,
    [MC_BOOL] = mc_bool_div,        [MC_FLOAT16] = mc_f16_div,
    [MC_BFLOAT16] = mc_bf16_div,    [MC_FLOAT32] = mc_f32_div,
    [MC_FLOAT64] = mc_f64_div,      [MC_FLOAT8_E4M3] = mc_e4m3_div_tab,
    [MC_FLOAT8_E5M2] = mc_e5m2_div_tab,
};

/* The run-time selected division kernel (fp16 with AVX2/F16C), or NULL. */
static mc_div_fn mc_simd_div(mc_dtype_t dtype)
{
#if MC_REDUCE_X86
    if (dtype == MC_FLOAT16 &&
        atomic_load_explicit(&mc_simd_allowed, memory_order_relaxed) &&
        mc_cpu_has_avx2_f16c())
        return mc_f16_div_avx2;
#endif
    (void)dtype;
    return NULL;
}

static mc_div_fn mc_simd_div(mc_dtype_t dtype);

void mc_reduce_div(void *dst, size_t count, mc_dtype_t dtype, uint64_t n)
{
    mc_reduce_div_to(dst, dst, count, dtype, n);
}

void mc_reduce_div_to(void *dst, const void *src, size_t count,
                      mc_dtype_t dtype, uint64_t n)
{
    if ((unsigned)dtype >= MC_DTYPE_COUNT || n == 0) {
        MC_LOG(MC_LOG_ERROR, "mc_reduce_div: invalid dtype %d or divisor %llu",
               (int)dtype, (unsigned long long)n);
        return;
    }
    if (count == 0) return;
    size_t es = mc_dtype_size(dtype);
    mc_div_fn fn = mc_simd_div(dtype);
    if (!fn) fn = mc_divs[dtype];
    if ((((uintptr_t)dst | (uintptr_t)src) & (es - 1)) == 0) {
        fn(dst, src, count, n);
        return;
    }
    _Alignas(64) unsigned char t[MC_STAGE_BYTES];
    size_t per = MC_STAGE_BYTES / es;
    for (size_t off = 0; off < count; off += per) {
        size_t m = count - off < per ? count - off : per;
        unsigned char *p = (unsigned char *)dst + off * es;
        memcpy(t, (const unsigned char *)src + off * es, m * es);
        fn(t, t, m, n);
        memcpy(p, t, m * es);
    }
}

void mc_copy_stream(void *dst, const void *src, size_t n)
{
#if defined(__x86_64__) && defined(__SSE2__)
    char *d = dst;
    const char *s = src;
    size_t head = (16 - ((uintptr_t)d & 15)) & 15;
    if (n < 256) {
        memcpy(d, s, n);
        return;
    }
    memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    for (; n >= 64; n -= 64, d += 64, s += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(const void *)s);
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(s + 16));
        __m128i e = _mm_loadu_si128((const __m128i *)(const void *)(s + 32));
        __m128i f = _mm_loadu_si128((const __m128i *)(const void *)(s + 48));
        _mm_stream_si128((__m128i *)(void *)d, a);
        _mm_stream_si128((__m128i *)(void *)(d + 16), b);
        _mm_stream_si128((__m128i *)(void *)(d + 32), e);
        _mm_stream_si128((__m128i *)(void *)(d + 48), f);
    }
    memcpy(d, s, n);
    _mm_sfence();
#else
    memcpy(dst, src, n);
#endif
}

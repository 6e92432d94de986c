/*
 * Tests for collectives/reduce.c and dtype.c: every dtype x op against a
 * scalar reference written here (exact arithmetic in double / __int128,
 * low-precision formats decoded with ldexp and encoded by rounding with
 * nearbyint and searching the code space), never the library's own helpers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coll.h"
#include "mooncake/mooncake.h"
#include "reduce.h"

/* Test hook in reduce.c (not in reduce.h): switch the AVX2/F16C kernels
 * off and on so both paths run on the same machine. */

/* ------------------------------------------------------------------------ */
/* Reference formats                                                        */
/* ------------------------------------------------------------------------ */

typedef struct fmt {
    int ebits, mbits, bias;
    int fn; /* e4m3fn: no inf, only S.1111.111 is NaN */
} fmt_t;

static const fmt_t F16 = {5, 10, 15, 0};
static const fmt_t BF16 = {8, 7, 127, 0};
static const fmt_t E4M3 = {4, 3, 7, 1};
static const fmt_t E5M2 = {5, 2, 15, 0};

static uint32_t f_sign(const fmt_t *f)
{
    return 1u << (f->ebits + f->mbits);
}
static uint32_t f_emax(const fmt_t *f)
{
    return (1u << f->ebits) - 1;
}

static int ref_isnan(const fmt_t *f, uint32_t c)
{
    uint32_t e = (c >> f->mbits) & f_emax(f), m = c & ((1u << f->mbits) - 1);
    if (f->fn) return e == f_emax(f) && m == (1u << f->mbits) - 1;
    return e == f_emax(f) && m != 0;
}

static double ref_decode(const fmt_t *f, uint32_t c)
{
    uint32_t e = (c >> f->mbits) & f_emax(f), m = c & ((1u << f->mbits) - 1);
    double s = (c & f_sign(f)) ? -1.0 : 1.0;
    if (ref_isnan(f, c)) return s * NAN;
    if (!f->fn && e == f_emax(f)) return s * INFINITY;
    if (e == 0) return s * ldexp((double)m, 1 - f->bias - f->mbits);
    return s *
           ldexp((double)((1u << f->mbits) + m), (int)e - f->bias - f->mbits);
}

static uint32_t ref_max_code(const fmt_t *f)
{
    /* largest finite positive code */
    return f->fn ? f_sign(f) - 2 : (f_emax(f) << f->mbits) - 1;
}

/* The codes the library returns for NaN (PyTorch's choices). */
static uint32_t ref_nan_code(const fmt_t *f, int neg)
{
    if (f == &BF16) return 0x7fc0;
    if (f == &F16) return (neg ? 0x8000u : 0) | 0x7e00u;
    return (neg ? 0x80u : 0) | 0x7fu; /* both fp8 */
}

/* Round v to the format: nearest, ties to even; out of range -> inf (IEEE
 * formats) or NaN (fn). */
static uint32_t ref_encode(const fmt_t *f, double v)
{
    int neg = signbit(v) != 0;
    uint32_t sgn = neg ? f_sign(f) : 0;
    if (isnan(v)) return ref_nan_code(f, neg);
    double a = fabs(v);
    if (a == 0) return sgn;
    double maxf = ref_decode(f, ref_max_code(f));
    double r = INFINITY;
    if (!isinf(a)) {
        int e = ilogb(a);
        if (e < 1 - f->bias) e = 1 - f->bias;
        double q = ldexp(1.0, e - f->mbits);
        r = nearbyint(a / q) * q;
    }
    if (r > maxf)
        return f->fn ? sgn | (f_sign(f) - 1) : sgn | (f_emax(f) << f->mbits);
    uint32_t lo = 0, hi = ref_max_code(f);
    while (lo < hi) { /* positive codes are ordered by value */
        uint32_t mid = (lo + hi) / 2;
        if (ref_decode(f, mid) < r)
            lo = mid + 1;
        else
            hi = mid;
    }
    assert_true(ref_decode(f, lo) == r);
    return sgn | lo;
}

static float bits2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t f2bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* ------------------------------------------------------------------------ */
/* Conversions                                                              */
/* ------------------------------------------------------------------------ */

static float lib_dec(const fmt_t *f, uint32_t c)
{
    if (f == &F16) return mc_fp16_to_float((uint16_t)c);
    if (f == &BF16) return mc_bf16_to_float((uint16_t)c);
    if (f == &E4M3) return mc_fp8e4m3_to_float((uint8_t)c);
    return mc_fp8e5m2_to_float((uint8_t)c);
}

static uint32_t lib_enc(const fmt_t *f, float v)
{
    if (f == &F16) return mc_float_to_fp16(v);
    if (f == &BF16) return mc_float_to_bf16(v);
    if (f == &E4M3) return mc_float_to_fp8e4m3(v);
    return mc_float_to_fp8e5m2(v);
}

static const fmt_t *const all_fmts[] = {&F16, &BF16, &E4M3, &E5M2};

/* Every code: decode matches the reference, encode(decode(c)) == c. */
static void test_exhaustive_roundtrip(void **state)
{
    (void)state;
    for (size_t k = 0; k < 4; k++) {
        const fmt_t *f = all_fmts[k];
        uint32_t ncodes = f_sign(f) * 2;
        for (uint32_t c = 0; c < ncodes; c++) {
            float got = lib_dec(f, c);
            double want = ref_decode(f, c);
            int neg = (c & f_sign(f)) != 0;
            assert_int_equal(signbit(got) != 0, neg);
            if (ref_isnan(f, c)) {
                assert_true(isnan(got));
                assert_int_equal(lib_enc(f, got), ref_nan_code(f, neg));
                continue;
            }
            if ((double)got != want) {
                fail_msg("fmt %zu code 0x%x: decoded %a, want %a", k, c,
                         (double)got, want);
            }
            if (lib_enc(f, got) != c)
                fail_msg("fmt %zu code 0x%x: round trip gave 0x%x", k, c,
                         lib_enc(f, got));
        }
    }
}

/* Ties (RNE), values just either side of every tie, and random floats. */
static void test_encode_vs_reference(void **state)
{
    (void)state;
    for (size_t k = 0; k < 4; k++) {
        const fmt_t *f = all_fmts[k];
        uint32_t maxc = ref_max_code(f);
        for (uint32_t c = 0; c <= maxc; c++) {
            /* the midpoint to the next code, or past the largest finite */
            double lo = ref_decode(f, c);
            double hi = c < maxc ? ref_decode(f, c + 1)
                                 : lo + (lo - ref_decode(f, c - 1));
            float mid = (float)((lo + hi) / 2);
            assert_true((double)mid == (lo + hi) / 2); /* exact in binary32 */
            float probes[3] = {mid, nextafterf(mid, 0),
                               nextafterf(mid, INFINITY)};
            for (int p = 0; p < 3; p++) {
                for (int s = 0; s < 2; s++) {
                    float v = s ? -probes[p] : probes[p];
                    uint32_t want = ref_encode(f, v), got = lib_enc(f, v);
                    if (got != want)
                        fail_msg("fmt %zu: %a encoded 0x%x, want 0x%x", k,
                                 (double)v, got, want);
                }
            }
        }
        uint64_t x = 0x9e3779b97f4a7c15ull + k;
        for (int i = 0; i < 300000; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            uint32_t u = (uint32_t)(x >> 16);
            /* half the samples near the format's range */
            if (i & 1)
                u = (u & 0x807fffffu) | ((uint32_t)(100 + (x % 60)) << 23);
            float v = bits2f(u);
            uint32_t want = ref_encode(f, v), got = lib_enc(f, v);
            if (got != want)
                fail_msg("fmt %zu: %a (0x%08x) encoded 0x%x, want 0x%x", k,
                         (double)v, u, got, want);
        }
    }
}

/* The named edge cases, spelled out. */
static void test_encode_edges(void **state)
{
    (void)state;
    /* fp16 */
    assert_int_equal(mc_float_to_fp16(65504.0f), 0x7bff);
    assert_int_equal(mc_float_to_fp16(nextafterf(65520.0f, 0)), 0x7bff);
    assert_int_equal(mc_float_to_fp16(65520.0f), 0x7c00);
    assert_int_equal(mc_float_to_fp16(-65520.0f), 0xfc00);
    assert_int_equal(mc_float_to_fp16(1e10f), 0x7c00);
    assert_int_equal(mc_float_to_fp16(INFINITY), 0x7c00);
    assert_int_equal(mc_float_to_fp16(-INFINITY), 0xfc00);
    assert_int_equal(mc_float_to_fp16(NAN), 0x7e00);
    assert_int_equal(mc_float_to_fp16(-0.0f), 0x8000);
    assert_int_equal(mc_float_to_fp16(1.0f + 0x1p-11f), 0x3c00); /* tie even */
    assert_int_equal(mc_float_to_fp16(1.0f + 0x3p-11f), 0x3c02); /* tie up */
    assert_int_equal(mc_float_to_fp16(0x1p-24f), 0x0001);
    assert_int_equal(mc_float_to_fp16(0x1p-25f), 0x0000);
    assert_int_equal(mc_float_to_fp16(nextafterf(0x1p-25f, 1)), 0x0001);
    assert_int_equal(mc_float_to_fp16(0x3p-25f), 0x0002);
    assert_int_equal(mc_float_to_fp16(0x1p-14f), 0x0400);
    assert_int_equal(mc_float_to_fp16(nextafterf(0x1p-14f, 0)), 0x0400);
    assert_int_equal(mc_float_to_fp16(FLT_TRUE_MIN), 0x0000);
    assert_true(mc_fp16_to_float(0x0001) == 0x1p-24f);
    /* bf16 */
    assert_int_equal(mc_float_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    assert_int_equal(mc_float_to_bf16(1.0f + 0x3p-8f), 0x3f82);
    assert_int_equal(mc_float_to_bf16(FLT_MAX), 0x7f80);
    assert_int_equal(mc_float_to_bf16(bits2f(0x7f7f7fffu)), 0x7f7f);
    assert_int_equal(mc_float_to_bf16(bits2f(0x7f7f8000u)), 0x7f80);
    assert_int_equal(mc_float_to_bf16(bits2f(0x00008000u)), 0x0000);
    assert_int_equal(mc_float_to_bf16(bits2f(0x00018000u)), 0x0002);
    assert_int_equal(mc_float_to_bf16(bits2f(0x80018001u)), 0x8002);
    assert_int_equal(mc_float_to_bf16(bits2f(0x7fa00000u)), 0x7fc0); /* sNaN */
    assert_int_equal(mc_float_to_bf16(bits2f(0xffc00001u)), 0x7fc0);
    assert_int_equal(mc_float_to_bf16(-INFINITY), 0xff80);
    /* e4m3fn */
    assert_int_equal(mc_float_to_fp8e4m3(448.0f), 0x7e);
    assert_int_equal(mc_float_to_fp8e4m3(464.0f), 0x7e); /* tie to even */
    assert_int_equal(mc_float_to_fp8e4m3(nextafterf(464.0f, 1000)), 0x7f);
    assert_int_equal(mc_float_to_fp8e4m3(480.0f), 0x7f);
    assert_int_equal(mc_float_to_fp8e4m3(1e6f), 0x7f);
    assert_int_equal(mc_float_to_fp8e4m3(-1e6f), 0xff);
    assert_int_equal(mc_float_to_fp8e4m3(INFINITY), 0x7f);
    assert_int_equal(mc_float_to_fp8e4m3(-INFINITY), 0xff);
    assert_int_equal(mc_float_to_fp8e4m3(NAN), 0x7f);
    assert_int_equal(mc_float_to_fp8e4m3(0x1p-9f), 0x01);
    assert_int_equal(mc_float_to_fp8e4m3(0x1p-10f), 0x00);
    assert_int_equal(mc_float_to_fp8e4m3(0x3p-10f), 0x02);
    assert_int_equal(mc_float_to_fp8e4m3(0x1p-6f), 0x08);
    assert_int_equal(mc_float_to_fp8e4m3(1.0625f), 0x38);
    assert_int_equal(mc_float_to_fp8e4m3(1.1875f), 0x3a);
    assert_true(isnan(mc_fp8e4m3_to_float(0x7f)));
    assert_true(mc_fp8e4m3_to_float(0x7e) == 448.0f);
    assert_true(mc_fp8e4m3_to_float(0x78) == 256.0f); /* not inf */
    /* e5m2 */
    assert_int_equal(mc_float_to_fp8e5m2(57344.0f), 0x7b);
    assert_int_equal(mc_float_to_fp8e5m2(61439.0f), 0x7b);
    assert_int_equal(mc_float_to_fp8e5m2(61440.0f), 0x7c);
    assert_int_equal(mc_float_to_fp8e5m2(-1e30f), 0xfc);
    assert_int_equal(mc_float_to_fp8e5m2(0x1p-16f), 0x01);
    assert_int_equal(mc_float_to_fp8e5m2(0x1p-17f), 0x00);
    assert_int_equal(mc_float_to_fp8e5m2(0x3p-17f), 0x02);
    assert_int_equal(mc_float_to_fp8e5m2(NAN), 0x7f);
    assert_int_equal(mc_float_to_fp8e5m2(-NAN), 0xff);
    assert_true(isinf(mc_fp8e5m2_to_float(0x7c)));
}

/* ------------------------------------------------------------------------ */
/* Reference reduction                                                      */
/* ------------------------------------------------------------------------ */

static int is_int(mc_dtype_t d)
{
    return d <= MC_UINT64;
}
static int is_signed(mc_dtype_t d)
{
    return d == MC_INT8 || d == MC_INT16 || d == MC_INT32 || d == MC_INT64;
}
static int is_bitwise(mc_redop_t op)
{
    return op == MC_BAND || op == MC_BOR || op == MC_BXOR;
}
static int ref_valid(mc_dtype_t d, mc_redop_t op)
{
    if (d == MC_BOOL) return op != MC_AVG;
    if (is_int(d)) return 1;
    return !is_bitwise(op);
}

static const fmt_t *lowp_fmt(mc_dtype_t d)
{
    switch (d) {
    case MC_FLOAT16:
        return &F16;
    case MC_BFLOAT16:
        return &BF16;
    case MC_FLOAT8_E4M3:
        return &E4M3;
    case MC_FLOAT8_E5M2:
        return &E5M2;
    default:
        return NULL;
    }
}

static size_t esize(mc_dtype_t d)
{
    static const size_t sz[MC_DTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 8, 8,
                                              1, 2, 2, 4, 8, 1, 1};
    return sz[d];
}

static uint64_t load_bits(mc_dtype_t d, const void *p, size_t i)
{
    uint64_t v = 0;
    memcpy(&v, (const char *)p + i * esize(d), esize(d)); /* little endian */
    return v;
}

static void store_bits(mc_dtype_t d, void *p, size_t i, uint64_t v)
{
    memcpy((char *)p + i * esize(d), &v, esize(d));
}

static __int128 int_value(mc_dtype_t d, uint64_t bits)
{
    int w = (int)esize(d) * 8;
    if (is_signed(d) && w < 64 && (bits >> (w - 1)) & 1)
        return (__int128)bits - ((__int128)1 << w);
    if (is_signed(d) && w == 64) return (__int128)(int64_t)bits;
    return (__int128)bits;
}

static int elem_isnan(mc_dtype_t d, uint64_t bits)
{
    const fmt_t *f = lowp_fmt(d);
    if (f) return ref_isnan(f, (uint32_t)bits);
    if (d == MC_FLOAT32) return isnan(bits2f((uint32_t)bits));
    if (d == MC_FLOAT64) {
        double x;
        memcpy(&x, &bits, 8);
        return isnan(x);
    }
    return 0;
}

static double elem_value(mc_dtype_t d, uint64_t bits)
{
    const fmt_t *f = lowp_fmt(d);
    if (f) return ref_decode(f, (uint32_t)bits);
    if (d == MC_FLOAT32) return bits2f((uint32_t)bits);
    double x;
    memcpy(&x, &bits, 8);
    return x;
}

/* Expected result bits of x op y; *any_nan set when any NaN is acceptable. */
static uint64_t ref_op(mc_dtype_t d, mc_redop_t op, uint64_t x, uint64_t y,
                       int *any_nan)
{
    *any_nan = 0;
    if (op == MC_AVG) op = MC_SUM;
    if (d == MC_BOOL) {
        int a = x != 0, b = y != 0;
        switch (op) {
        case MC_SUM:
        case MC_MAX:
        case MC_BOR:
            return a || b;
        case MC_PROD:
        case MC_MIN:
        case MC_BAND:
            return a && b;
        default:
            return a != b;
        }
    }
    if (is_int(d)) {
        int w = (int)esize(d) * 8;
        uint64_t mask = w == 64 ? ~0ull : (1ull << w) - 1;
        __int128 a = int_value(d, x), b = int_value(d, y);
        unsigned __int128 r;
        switch (op) {
        case MC_SUM:
            r = (unsigned __int128)a + (unsigned __int128)b;
            break;
        case MC_PROD:
            r = (unsigned __int128)a * (unsigned __int128)b;
            break;
        case MC_MIN:
            r = (unsigned __int128)(a < b ? a : b);
            break;
        case MC_MAX:
            r = (unsigned __int128)(a > b ? a : b);
            break;
        case MC_BAND:
            r = x & y;
            break;
        case MC_BOR:
            r = x | y;
            break;
        default:
            r = x ^ y;
            break;
        }
        return (uint64_t)r & mask;
    }
    int xn = elem_isnan(d, x), yn = elem_isnan(d, y);
    double a = elem_value(d, x), b = elem_value(d, y);
    if (op == MC_MIN || op == MC_MAX) {
        if (xn || yn) {
            *any_nan = 1;
            return 0;
        }
        if (a == b) { /* equal: only +-0 may differ in bits */
            int an = signbit(a) != 0;
            if (op == MC_MIN) return an ? x : y;
            return an ? y : x;
        }
        return (op == MC_MIN) == (a < b) ? x : y;
    }
    if (d == MC_FLOAT64) {
        double r = op == MC_SUM ? a + b : a * b;
        uint64_t u;
        memcpy(&u, &r, 8);
        *any_nan = isnan(r);
        return u;
    }
    /* binary32 arithmetic, then one rounding */
    float fa = (float)a, fb = (float)b;
    float r = op == MC_SUM ? fa + fb : fa * fb;
    *any_nan = isnan(r);
    if (d == MC_FLOAT32) return f2bits(r);
    return ref_encode(lowp_fmt(d), r);
}

/* ------------------------------------------------------------------------ */
/* Inputs                                                                   */
/* ------------------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Edge cases: extremes, wraparound, signed zeros, NaN, inf, subnormals,
 * near-overflow; mixed with random bits and with "ordinary" values. */
static uint64_t gen_elem(mc_dtype_t d, uint64_t *s)
{
    uint64_t r = rng_next(s);
    int w = (int)esize(d) * 8;
    uint64_t mask = w == 64 ? ~0ull : (1ull << w) - 1;
    unsigned pick = (unsigned)(r >> 59); /* 0..31 */
    uint64_t rb = rng_next(s);
    if (d == MC_BOOL) {
        static const uint8_t bv[] = {0, 1, 2, 255, 0, 1};
        return bv[rb % 6];
    }
    if (is_int(d)) {
        uint64_t smax = (mask >> 1), smin = smax + 1;
        switch (pick % 8) {
        case 0:
            return 0;
        case 1:
            return mask; /* -1 / UMAX */
        case 2:
            return smax;
        case 3:
            return smin;
        case 4:
            return (rb % 7) & mask; /* small */
        case 5:
            return (0 - (rb % 7)) & mask; /* small negative */
        default:
            return rb & mask;
        }
    }
    if (d == MC_FLOAT32 || d == MC_FLOAT64) {
        double v;
        switch (pick % 12) {
        case 0:
            v = 0.0;
            break;
        case 1:
            v = -0.0;
            break;
        case 2:
            v = INFINITY;
            break;
        case 3:
            v = -INFINITY;
            break;
        case 4:
            v = NAN;
            break;
        case 5:
            v = d == MC_FLOAT32 ? FLT_MAX : DBL_MAX;
            break;
        case 6:
            v = d == MC_FLOAT32 ? FLT_TRUE_MIN : DBL_TRUE_MIN;
            break;
        case 7:
            return rb & mask; /* any bit pattern */
        default:
            v = ((double)(int64_t)(rb % 2001) - 1000.0) / 16.0;
            break;
        }
        if (d == MC_FLOAT32) return f2bits((float)v);
        uint64_t u;
        memcpy(&u, &v, 8);
        return u;
    }
    const fmt_t *f = lowp_fmt(d);
    uint32_t sg = (pick & 1) ? f_sign(f) : 0;
    switch (pick % 10) {
    case 0:
    case 1:
        return sg; /* +-0 */
    case 2:
    case 3:
        return sg | ref_max_code(f); /* near overflow */
    case 4:
        return sg | 1; /* smallest subnormal */
    case 5:
        return ref_encode(f, (double)((int)(rb % 9) - 4)); /* small ints */
    default:
        return rb & mask; /* incl. NaN, inf */
    }
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

/* result vs. the reference, element by element */
static void check_result(mc_dtype_t d, mc_redop_t op, const void *a,
                         const void *b, const void *out, size_t n,
                         const char *what)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t x = load_bits(d, a, i), y = load_bits(d, b, i);
        int any_nan;
        uint64_t want = ref_op(d, op, x, y, &any_nan);
        uint64_t got = load_bits(d, out, i);
        if (any_nan ? !elem_isnan(d, got) : got != want)
            fail_msg("%s %s %s n=%zu i=%zu: 0x%llx op 0x%llx = 0x%llx, "
                     "want 0x%llx%s",
                     what, mc_dtype_name(d), mc_redop_name(op), n, i,
                     (unsigned long long)x, (unsigned long long)y,
                     (unsigned long long)got, (unsigned long long)want,
                     any_nan ? " (NaN)" : "");
    }
}

/* two results must be equal bit for bit, except where both inputs are NaN
 * (NaN payloads aside, as reduce.h allows): there both must be NaN */
static void check_same(mc_dtype_t d, const void *a, const void *b,
                       const void *r1, const void *r2, size_t n,
                       const char *what)
{
    /* bit for bit, NaN results included (guarantee 2: the same bits on
     * every rank, whichever order or path computed them) */
    (void)a;
    (void)b;
    for (size_t i = 0; i < n; i++) {
        uint64_t g1 = load_bits(d, r1, i), g2 = load_bits(d, r2, i);
        if (g1 == g2) continue;
        fail_msg("%s %s i=%zu: 0x%llx != 0x%llx", what, mc_dtype_name(d), i,
                 (unsigned long long)g1, (unsigned long long)g2);
    }
}

static const size_t lens[] = {0, 1, 7, 1003, 4099};

static void run_all_ops(int simd)
{
    int prev = mc_reduce_simd_enable(simd);
    uint64_t seed = 0x1234567887654321ull;
    for (int di = 0; di < MC_DTYPE_COUNT; di++) {
        mc_dtype_t d = (mc_dtype_t)di;
        size_t es = esize(d);
        for (int oi = 0; oi < MC_REDOP_COUNT; oi++) {
            mc_redop_t op = (mc_redop_t)oi;
            if (!ref_valid(d, op)) continue;
            for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
                size_t n = lens[li], bytes = n * es;
                unsigned char *a = xmalloc(bytes), *b = xmalloc(bytes);
                unsigned char *o1 = xmalloc(bytes), *o2 = xmalloc(bytes);
                unsigned char *t = xmalloc(bytes);
                /* three odd offsets: 1, bytes+2, 2*bytes+3 */
                unsigned char *mis = xmalloc(3 * bytes + 3);
                for (size_t i = 0; i < n; i++) {
                    store_bits(d, a, i, gen_elem(d, &seed));
                    store_bits(d, b, i, gen_elem(d, &seed));
                }
                /* plain, against the reference */
                mc_reduce(o1, a, b, n, d, op);
                check_result(d, op, a, b, o1, n, "a op b");
                /* commutative */
                mc_reduce(o2, b, a, n, d, op);
                check_same(d, a, b, o1, o2, n, "b op a");
                /* dst == a, dst == b */
                if (n) memcpy(t, a, bytes);
                mc_reduce(t, t, b, n, d, op);
                check_same(d, a, b, o1, t, n, "dst==a");
                if (n) memcpy(t, b, bytes);
                mc_reduce(t, a, t, n, d, op);
                check_same(d, a, b, o1, t, n, "dst==b");
                /* dst == a == b */
                if (n) memcpy(t, a, bytes);
                mc_reduce(t, t, t, n, d, op);
                check_result(d, op, a, a, t, n, "a op a (all aliased)");
                /* buffers off their element alignment (staged path) */
                if (es > 1) {
                    unsigned char *ma = mis + 1, *mb = mis + bytes + 2;
                    unsigned char *mo = mis + 2 * bytes + 3;
                    if (n) {
                        memcpy(ma, a, bytes);
                        memcpy(mb, b, bytes);
                    }
                    mc_reduce(mo, ma, mb, n, d, op);
                    check_same(d, a, b, o1, mo, n, "misaligned");
                    mc_reduce(ma, ma, mb, n, d, op);
                    check_same(d, a, b, o1, ma, n, "misaligned dst==a");
                }
                free(a);
                free(b);
                free(o1);
                free(o2);
                free(t);
                free(mis);
            }
        }
    }
    mc_reduce_simd_enable(prev);
}

static void test_reduce_all_simd(void **state)
{
    (void)state;
    run_all_ops(1);
}

static void test_reduce_all_portable(void **state)
{
    (void)state;
    run_all_ops(0);
}

/* Every pair of fp8 codes, every float op, against the reference. */
static void test_fp8_all_pairs(void **state)
{
    (void)state;
    mc_dtype_t ds[2] = {MC_FLOAT8_E4M3, MC_FLOAT8_E5M2};
    mc_redop_t ops[4] = {MC_SUM, MC_PROD, MC_MIN, MC_MAX};
    uint8_t *a = xmalloc(65536), *b = xmalloc(65536), *o = xmalloc(65536);
    for (int i = 0; i < 65536; i++) {
        a[i] = (uint8_t)(i >> 8);
        b[i] = (uint8_t)i;
    }
    for (int di = 0; di < 2; di++)
        for (int oi = 0; oi < 4; oi++) {
            mc_reduce(o, a, b, 65536, ds[di], ops[oi]);
            check_result(ds[di], ops[oi], a, b, o, 65536, "all pairs");
        }
    free(a);
    free(b);
    free(o);
}

/* The AVX2/F16C kernels give the portable kernels' bits on random bit
 * patterns (every class: NaN, inf, subnormal, overflow) and on ordinary
 * values, for every length mod 16 and both aliasing shapes. */
static void test_simd_matches_portable(void **state)
{
    (void)state;
    const size_t n = 1 << 16;
    mc_dtype_t ds[2] = {MC_FLOAT16, MC_BFLOAT16};
    mc_redop_t ops[3] = {MC_SUM, MC_PROD, MC_AVG};
    uint16_t *a = xmalloc(n * 2), *b = xmalloc(n * 2);
    uint16_t *r1 = xmalloc(n * 2), *r2 = xmalloc(n * 2);
    uint64_t s = 42;
    for (int di = 0; di < 2; di++) {
        for (size_t i = 0; i < n; i++) {
            uint64_t r = rng_next(&s);
            if (i & 1) {
                a[i] = (uint16_t)r;
                b[i] = (uint16_t)(r >> 16);
            } else { /* ordinary magnitudes, where rounding is the issue */
                a[i] = (uint16_t)((r & 0x83ff) | (((r >> 20) % 8 + 12) << 10));
                b[i] = (uint16_t)(((r >> 32) & 0x83ff) |
                                  (((r >> 50) % 8 + 12) << 10));
                if (ds[di] == MC_BFLOAT16) {
                    a[i] = mc_float_to_bf16(mc_fp16_to_float(a[i]));
                    b[i] = mc_float_to_bf16(mc_fp16_to_float(b[i]));
                }
            }
        }
        for (int oi = 0; oi < 3; oi++) {
            const size_t simd_lens[3] = {n - 17, n - 1, n};
            for (int li = 0; li < 3; li++) {
                size_t len = simd_lens[li];
                mc_reduce_simd_enable(0);
                mc_reduce(r1, a, b, len, ds[di], ops[oi]);
                mc_reduce_simd_enable(1);
                mc_reduce(r2, a, b, len, ds[di], ops[oi]);
                check_same(ds[di], a, b, r1, r2, len, "simd vs portable");
                memcpy(r2, b, len * 2);
                mc_reduce(r2, a, r2, len, ds[di], ops[oi]);
                check_same(ds[di], a, b, r1, r2, len, "simd dst==b");
            }
            check_result(ds[di], ops[oi], a, b, r1, n, "simd set");
        }
    }
    free(a);
    free(b);
    free(r1);
    free(r2);
}

/* ------------------------------------------------------------------------ */
/* AVG finalisation                                                         */
/* AVG's fp16 division (mc_reduce_div, and mc_reduce_div_to into another
 * buffer): the AVX2/F16C kernel gives the portable kernel's bits for every
 * one of the 65536 fp16 values (NaNs of either sign and any payload,
 * infinities, subnormals), for several n, on lengths that leave a scalar
 * tail, from an aligned source and a misaligned one. */
/* One-byte dtypes divide long vectors through a 256-entry table of the
 * quotients (reduce.c, MC_DEF_TDIV): the same bits as the per-element
 * kernel, which a vector shorter than the table's threshold still takes
 * (one element at a time here), for every value and divisors up to 2^40;
 * plus a few quotients known by hand. */
static void test_div_bytes_table(void **state)
{
    (void)state;
    const size_t N = 4096 + 3;
    uint8_t *x = xmalloc(N), *p = xmalloc(N);
    for (size_t i = 0; i < N; i++)
        x[i] = (uint8_t)(i * 167u); /* every value, shuffled */
    const mc_dtype_t dts[] = {MC_FLOAT8_E4M3, MC_FLOAT8_E5M2, MC_INT8,
                              MC_UINT8};
    const uint64_t ns[] = {1, 2, 3, 5, 7, 8, 255, 256, 1000, 1ull << 40};
    for (size_t d = 0; d < sizeof(dts) / sizeof(dts[0]); d++)
        for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
            memset(p, 0, N);
            mc_reduce_div_to(p, x, N, dts[d], ns[k]);
            for (size_t i = 0; i < N; i++) {
                uint8_t want = 0;
                mc_reduce_div_to(&want, &x[i], 1, dts[d], ns[k]);
                if (p[i] != want)
                    fail_msg("dtype %d: 0x%02x / %llu: 0x%02x, the direct "
                             "kernel 0x%02x",
                             (int)dts[d], x[i], (unsigned long long)ns[k],
                             p[i], want);
            }
            memcpy(p, x, N); /* in place too */
            mc_reduce_div(p, N, dts[d], ns[k]);
            for (size_t i = 0; i < N; i++) {
                uint8_t want = 0;
                mc_reduce_div_to(&want, &x[i], 1, dts[d], ns[k]);
                assert_int_equal(p[i], want);
            }
        }
    /* by hand: int8 -128 / 3 = -42 (truncated), uint8 255 / 2 = 127, e4m3
     * 1.0 (0x38) / 2 = 0.5 (0x30), e5m2 1.0 (0x3c) / 4 = 0.25 (0x34) */
    uint8_t a[2048];
    memset(a, 0x80, sizeof(a));
    mc_reduce_div(a, sizeof(a), MC_INT8, 3);
    assert_int_equal((int8_t)a[2047], -42);
    memset(a, 0xff, sizeof(a));
    mc_reduce_div(a, sizeof(a), MC_UINT8, 2);
    assert_int_equal(a[1500], 127);
    memset(a, 0x38, sizeof(a));
    mc_reduce_div(a, sizeof(a), MC_FLOAT8_E4M3, 2);
    assert_int_equal(a[0], 0x30);
    memset(a, 0x3c, sizeof(a));
    mc_reduce_div(a, sizeof(a), MC_FLOAT8_E5M2, 4);
    assert_int_equal(a[1], 0x34);
    free(x);
    free(p);
}

static void test_div_simd_matches_portable(void **state)
{
    (void)state;
    const size_t N = 65536 + 5;
    uint16_t *x = xmalloc(N * 2), *p1 = xmalloc(N * 2), *p2 = xmalloc(N * 2);
    uint16_t *p3 = xmalloc(N * 2);
    unsigned char *mis = xmalloc(N * 2 + 1);
    for (size_t i = 0; i < N; i++)
        x[i] = (uint16_t)(i * 40503u); /* every value once, shuffled */
    const uint64_t ns[] = {1, 2, 3, 5, 7, 8, 1000, 65537};
    for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
        const size_t len[2] = {N, N - 3};
        for (int l = 0; l < 2; l++) {
            memcpy(p1, x, N * 2);
            memcpy(p2, x, N * 2);
            int prev = mc_reduce_simd_enable(0);
            mc_reduce_div(p1, len[l], MC_FLOAT16, ns[k]);
            mc_reduce_simd_enable(1);
            mc_reduce_div(p2, len[l], MC_FLOAT16, ns[k]);
            mc_reduce_simd_enable(prev);
            for (size_t i = 0; i < N; i++)
                if (p1[i] != p2[i])
                    fail_msg("fp16 / %llu, x=0x%04x: portable 0x%04x, simd "
                             "0x%04x",
                             (unsigned long long)ns[k], x[i], p1[i], p2[i]);
            /* into another buffer (avg_prepare), aligned and not */
            memset(p2, 0, N * 2);
            mc_reduce_div_to(p2, x, len[l], MC_FLOAT16, ns[k]);
            memcpy(mis + 1, x, N * 2);
            memset(p3, 0, N * 2);
            mc_reduce_div_to(p3, mis + 1, len[l], MC_FLOAT16, ns[k]);
            for (size_t i = 0; i < len[l]; i++)
                if (p1[i] != p2[i] || p1[i] != p3[i])
                    fail_msg("fp16 / %llu into a buffer, x=0x%04x: 0x%04x, "
                             "0x%04x (misaligned source), want 0x%04x",
                             (unsigned long long)ns[k], x[i], p2[i], p3[i],
                             p1[i]);
        }
    }
    free(x);
    free(p1);
    free(p2);
    free(p3);
    free(mis);
}

/* ------------------------------------------------------------------------ */

static void test_reduce_div(void **state)
{
    (void)state;
    const uint64_t ns[] = {1,    2,          3,          7,
                           1000, 1ull << 31, 1ull << 63, UINT64_MAX};
    const size_t n = 1003;
    uint64_t seed = 99;
    for (int di = 0; di < MC_DTYPE_COUNT; di++) {
        mc_dtype_t d = (mc_dtype_t)di;
        if (d == MC_BOOL) continue;
        size_t es = esize(d);
        unsigned char *src = xmalloc(n * es), *buf = xmalloc(n * es + 1);
        for (size_t i = 0; i < n; i++)
            store_bits(d, src, i, gen_elem(d, &seed));
        for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
            uint64_t dv = ns[k];
            if (!is_int(d) && dv > 1000) continue;
            for (int off = 0; off < (es > 1 ? 2 : 1); off++) {
                unsigned char *p = buf + off;
                memcpy(p, src, n * es);
                mc_reduce_div(p, n, d, dv);
                for (size_t i = 0; i < n; i++) {
                    uint64_t x = load_bits(d, src, i), got = load_bits(d, p, i);
                    uint64_t want;
                    int any_nan = 0;
                    if (is_int(d)) {
                        int w = (int)es * 8;
                        uint64_t mask = w == 64 ? ~0ull : (1ull << w) - 1;
                        /* C division truncates toward zero */
                        want =
                            (uint64_t)(int_value(d, x) / (__int128)dv) & mask;
                    } else if (d == MC_FLOAT64) {
                        double r = elem_value(d, x) / (double)dv;
                        memcpy(&want, &r, 8);
                        any_nan = isnan(r);
                    } else {
                        float r = (float)elem_value(d, x) / (float)dv;
                        any_nan = isnan(r);
                        want = d == MC_FLOAT32 ? f2bits(r)
                                               : ref_encode(lowp_fmt(d), r);
                    }
                    if (any_nan ? !elem_isnan(d, got) : got != want)
                        fail_msg("div %s by %llu i=%zu: 0x%llx -> 0x%llx, "
                                 "want 0x%llx",
                                 mc_dtype_name(d), (unsigned long long)dv, i,
                                 (unsigned long long)x, (unsigned long long)got,
                                 (unsigned long long)want);
                }
            }
        }
        free(src);
        free(buf);
    }
    /* spelled out: truncation toward zero */
    int32_t v[6] = {7, -7, 5, -5, INT32_MIN, INT32_MAX};
    mc_reduce_div(v, 6, MC_INT32, 2);
    int32_t want[6] = {3, -3, 2, -2, INT32_MIN / 2, INT32_MAX / 2};
    assert_memory_equal(v, want, sizeof(v));
    int64_t w64[2] = {INT64_MIN, INT64_MIN + 1};
    mc_reduce_div(w64, 2, MC_INT64, 1ull << 63);
    assert_int_equal(w64[0], -1);
    assert_int_equal(w64[1], 0);
    int8_t w8[3] = {-128, -1, 127};
    mc_reduce_div(w8, 3, MC_INT8, 3);
    assert_int_equal(w8[0], -42);
    assert_int_equal(w8[1], 0);
    assert_int_equal(w8[2], 42);
    float f[2] = {1.0f, -7.0f};
    mc_reduce_div(f, 2, MC_FLOAT32, 3);
    assert_true(f[0] == 1.0f / 3.0f && f[1] == -7.0f / 3.0f);
    /* n == 0 and bad dtypes are refused without touching the data */
    mc_reduce_div(f, 2, MC_FLOAT32, 0);
    assert_true(f[0] == 1.0f / 3.0f);
    mc_reduce_div(f, 2, (mc_dtype_t)MC_DTYPE_COUNT, 2);
    assert_true(f[0] == 1.0f / 3.0f);
}

/* AVG as the engine uses it: reduce as SUM, divide once. */
static void test_avg_end_to_end(void **state)
{
    (void)state;
    uint16_t a[5], b[5], c[5], o[5];
    float av[5] = {1.0f, -3.0f, 0.5f, 1000.0f, 65504.0f};
    float bv[5] = {2.0f, 1.0f, 0.25f, -999.0f, 0.0f};
    float cv[5] = {4.0f, 0.0f, 0.125f, 1.0f, 65504.0f};
    for (int i = 0; i < 5; i++) {
        a[i] = mc_float_to_fp16(av[i]);
        b[i] = mc_float_to_fp16(bv[i]);
        c[i] = mc_float_to_fp16(cv[i]);
    }
    mc_reduce(o, a, b, 5, MC_FLOAT16, MC_AVG);
    mc_reduce(o, o, c, 5, MC_FLOAT16, MC_AVG);
    mc_reduce_div(o, 5, MC_FLOAT16, 3);
    float want[5] = {7.0f / 3, -2.0f / 3, 0.875f / 3, 2.0f / 3, INFINITY};
    for (int i = 0; i < 5; i++)
        assert_int_equal(o[i], ref_encode(&F16, want[i]));
    int64_t ia[3] = {5, -5, INT64_MAX}, ib[3] = {2, -2, 1}, io[3];
    mc_reduce(io, ia, ib, 3, MC_INT64, MC_AVG);
    mc_reduce_div(io, 3, MC_INT64, 2);
    assert_int_equal(io[0], 3);
    assert_int_equal(io[1], -3);
    assert_int_equal(io[2], INT64_MIN / 2); /* wrapped sum, then divided */
}

/* ------------------------------------------------------------------------ */
/* Validation and names                                                     */
/* ------------------------------------------------------------------------ */

static void test_redop_check(void **state)
{
    (void)state;
    for (int di = 0; di < MC_DTYPE_COUNT; di++) {
        for (int oi = 0; oi < MC_REDOP_COUNT; oi++) {
            mc_dtype_t d = (mc_dtype_t)di;
            mc_redop_t op = (mc_redop_t)oi;
            mc_status_t st = mc_redop_check(d, op);
            if (ref_valid(d, op)) {
                assert_int_equal(st, MC_OK);
                continue;
            }
            assert_int_equal(st, MC_ERR_INVALID_ARG);
            assert_non_null(strstr(mc_last_error(), mc_dtype_name(d)));
            assert_non_null(strstr(mc_last_error(), mc_redop_name(op)));
        }
    }
    assert_int_equal(mc_redop_check((mc_dtype_t)-1, MC_SUM),
                     MC_ERR_INVALID_ARG);
    assert_int_equal(mc_redop_check((mc_dtype_t)MC_DTYPE_COUNT, MC_SUM),
                     MC_ERR_INVALID_ARG);
    assert_int_equal(mc_redop_check(MC_INT32, (mc_redop_t)MC_REDOP_COUNT),
                     MC_ERR_INVALID_ARG);
    assert_int_equal(mc_redop_check(MC_INT32, (mc_redop_t)-3),
                     MC_ERR_INVALID_ARG);
    /* an invalid combination passed to mc_reduce leaves dst alone */
    float x[2] = {1, 2}, y[2] = {3, 4}, z[2] = {9, 9};
    mc_reduce(z, x, y, 2, MC_FLOAT32, MC_BXOR);
    assert_true(z[0] == 9 && z[1] == 9);
}

static void test_names(void **state)
{
    (void)state;
    static const char *const dn[MC_DTYPE_COUNT] = {
        "int8",     "uint8",   "int16",   "uint16",      "int32",
        "uint32",   "int64",   "uint64",  "bool",        "float16",
        "bfloat16", "float32", "float64", "float8_e4m3", "float8_e5m2"};
    for (int d = 0; d < MC_DTYPE_COUNT; d++) {
        assert_string_equal(mc_dtype_name((mc_dtype_t)d), dn[d]);
        assert_int_equal(mc_dtype_size((mc_dtype_t)d), esize((mc_dtype_t)d));
    }
    assert_int_equal(mc_dtype_size((mc_dtype_t)MC_DTYPE_COUNT), 0);
    assert_int_equal(mc_dtype_size((mc_dtype_t)-1), 0);
    assert_string_equal(mc_dtype_name((mc_dtype_t)-1), "invalid");
    static const char *const on[MC_REDOP_COUNT] = {
        "sum", "prod", "min", "max", "avg", "band", "bor", "bxor"};
    for (int o = 0; o < MC_REDOP_COUNT; o++)
        assert_string_equal(mc_redop_name((mc_redop_t)o), on[o]);
    assert_string_equal(mc_redop_name((mc_redop_t)MC_REDOP_COUNT), "invalid");
    static const char *const cn[MC_COLL_COUNT] = {
        "none",           "allreduce",       "allgather", "allgatherv",
        "reduce_scatter", "reduce_scatterv", "broadcast", "reduce",
        "gather",         "scatter",         "alltoall",  "alltoallv",
        "barrier"};
    for (int c = 0; c < MC_COLL_COUNT; c++)
        assert_string_equal(mc_coll_name((mc_coll_t)c), cn[c]);
    assert_string_equal(mc_coll_name((mc_coll_t)MC_COLL_COUNT), "invalid");
    assert_string_equal(mc_coll_name((mc_coll_t)-1), "invalid");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_redop_check),
        cmocka_unit_test(test_exhaustive_roundtrip),
        cmocka_unit_test(test_encode_edges),
        cmocka_unit_test(test_encode_vs_reference),
        cmocka_unit_test(test_reduce_all_simd),
        cmocka_unit_test(test_reduce_all_portable),
        cmocka_unit_test(test_fp8_all_pairs),
        cmocka_unit_test(test_simd_matches_portable),
        cmocka_unit_test(test_reduce_div),
        cmocka_unit_test(test_div_simd_matches_portable),
        cmocka_unit_test(test_div_bytes_table),
        cmocka_unit_test(test_avg_end_to_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

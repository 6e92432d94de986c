/*
 * Serial reference for the multi-rank collective tests.
 *
 * Every rank can compute any rank's input (a pure function of seed, rank and
 * element index), so expected results need no communication. Inputs are
 * chosen per dtype and reduction op so that every partial result, in any
 * order and grouping, is exactly representable: the reference is exact and
 * results are compared bit for bit.
 *
 *   SUM/AVG  small integers (halves for float32/64): |sum| <= 16 for e4m3,
 *            <= 8 for e5m2, < 2^mantissa for the other floats, no integer
 *            overflow.
 *   PROD     +-1 almost everywhere, 2 or 0.5 on at most 2 of 8 ranks per
 *            element, an occasional 0.
 *   MIN/MAX  any non-NaN bit pattern (minus -0.0, whose order against +0.0
 *            is unspecified).
 *   bitwise  any bit pattern (bool: 0/1).
 *
 * AVG follows mooncake.h: exact sum, then one division (binary32 for the
 * sub-32-bit floats and float32, binary64 for float64, C truncation for
 * integers) rounded once to the dtype. Only the scalar conversion helpers of
 * reduce.h are used, never mc_reduce.
 */
#ifndef MC_TEST_REF_H
#define MC_TEST_REF_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "mooncake/mooncake.h"
#include "reduce.h"

static const char *const ref_dtype_names[MC_DTYPE_COUNT] = {
    "int8",     "uint8",   "int16",   "uint16",      "int32",
    "uint32",   "int64",   "uint64",  "bool",        "float16",
    "bfloat16", "float32", "float64", "float8_e4m3", "float8_e5m2"};
static const char *const ref_op_names[MC_REDOP_COUNT] = {
    "sum", "prod", "min", "max", "avg", "band", "bor", "bxor"};

static inline const char *ref_dname(mc_dtype_t d)
{
    return (unsigned)d < MC_DTYPE_COUNT ? ref_dtype_names[d] : "?";
}

static inline const char *ref_oname(mc_redop_t op)
{
    return (unsigned)op < MC_REDOP_COUNT ? ref_op_names[op] : "?";
}

static inline const char *ref_tname(mc_transport_kind_t t)
{
    return t == MC_TRANSPORT_SHM   ? "shm"
           : t == MC_TRANSPORT_TCP ? "tcp"
                                   : "auto";
}

static inline size_t ref_dsize(mc_dtype_t d)
{
    switch (d) {
    case MC_INT8:
    case MC_UINT8:
    case MC_BOOL:
    case MC_FLOAT8_E4M3:
    case MC_FLOAT8_E5M2:
        return 1;
    case MC_INT16:
    case MC_UINT16:
    case MC_FLOAT16:
    case MC_BFLOAT16:
        return 2;
    case MC_INT32:
    case MC_UINT32:
    case MC_FLOAT32:
        return 4;
    case MC_INT64:
    case MC_UINT64:
    case MC_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

static inline int ref_is_float(mc_dtype_t d)
{
    return d == MC_FLOAT16 || d == MC_BFLOAT16 || d == MC_FLOAT32 ||
           d == MC_FLOAT64 || d == MC_FLOAT8_E4M3 || d == MC_FLOAT8_E5M2;
}

static inline int ref_is_signed(mc_dtype_t d)
{
    return d == MC_INT8 || d == MC_INT16 || d == MC_INT32 || d == MC_INT64;
}

/* Is `op` defined for `d` and covered by the exact reference? (AVG on bool
 * has no documented meaning, so it is not tested.) */
static inline int ref_op_valid(mc_dtype_t d, mc_redop_t op)
{
    if (op >= MC_BAND) return !ref_is_float(d);
    if (op == MC_AVG && d == MC_BOOL) return 0;
    return 1;
}

/* splitmix64: the source of every test input. */
static inline uint64_t ref_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static inline uint64_t ref_hash3(uint64_t seed, uint64_t a, uint64_t b)
{
    return ref_mix(ref_mix(ref_mix(seed) ^ a) ^ (b * 0x2545f4914f6cdd1dull));
}

/* One element as the reference sees it: integers as their bit pattern
 * (sign-extended for signed types), floats as an exact double. */
typedef struct {
    uint64_t u;
    double f;
} ref_val_t;

static inline uint64_t ref_width_mask(mc_dtype_t d)
{
    size_t b = ref_dsize(d) * 8;
    return b >= 64 ? ~0ull : ((1ull << b) - 1);
}

static inline uint64_t ref_sext(mc_dtype_t d, uint64_t u)
{
    size_t b = ref_dsize(d) * 8;
    u &= ref_width_mask(d);
    if (ref_is_signed(d) && b < 64 && (u >> (b - 1)) & 1)
        u |= ~ref_width_mask(d);
    return u;
}

/* Raw element bits <-> double for float dtypes. */
static inline double ref_bits_to_double(mc_dtype_t d, uint64_t bits)
{
    switch (d) {
    case MC_FLOAT16:
        return mc_fp16_to_float((uint16_t)bits);
    case MC_BFLOAT16:
        return mc_bf16_to_float((uint16_t)bits);
    case MC_FLOAT8_E4M3:
        return mc_fp8e4m3_to_float((uint8_t)bits);
    case MC_FLOAT8_E5M2:
        return mc_fp8e5m2_to_float((uint8_t)bits);
    case MC_FLOAT32: {
        uint32_t w = (uint32_t)bits;
        float f;
        memcpy(&f, &w, 4);
        return f;
    }
    case MC_FLOAT64: {
        double f;
        memcpy(&f, &bits, 8);
        return f;
    }
    default:
        return 0;
    }
}

/* Round a binary32 value to the dtype (RNE, via the conversion helpers). */
static inline uint64_t ref_float_to_bits(mc_dtype_t d, float f)
{
    switch (d) {
    case MC_FLOAT16:
        return mc_float_to_fp16(f);
    case MC_BFLOAT16:
        return mc_float_to_bf16(f);
    case MC_FLOAT8_E4M3:
        return mc_float_to_fp8e4m3(f);
    case MC_FLOAT8_E5M2:
        return mc_float_to_fp8e5m2(f);
    case MC_FLOAT32: {
        uint32_t w;
        memcpy(&w, &f, 4);
        return w;
    }
    default:
        return 0;
    }
}

static inline uint64_t ref_double_to_bits(mc_dtype_t d, double v)
{
    if (d == MC_FLOAT64) {
        uint64_t w;
        memcpy(&w, &v, 8);
        return w;
    }
    return ref_float_to_bits(d, (float)v);
}

/* Element bits of a value. */
static inline uint64_t ref_bits(mc_dtype_t d, ref_val_t v)
{
    return ref_is_float(d) ? ref_double_to_bits(d, v.f)
                           : v.u & ref_width_mask(d);
}

static inline void ref_put_bits(mc_dtype_t d, void *buf, size_t i,
                                uint64_t bits)
{
    size_t es = ref_dsize(d);
    unsigned char *p = (unsigned char *)buf + i * es;
    for (size_t b = 0; b < es; b++)
        p[b] = (unsigned char)(bits >> (8 * b));
}

static inline uint64_t ref_get_bits(mc_dtype_t d, const void *buf, size_t i)
{
    size_t es = ref_dsize(d);
    const unsigned char *p = (const unsigned char *)buf + i * es;
    uint64_t bits = 0;
    for (size_t b = 0; b < es; b++)
        bits |= (uint64_t)p[b] << (8 * b);
    return bits;
}

/* Magnitude bound of SUM/AVG inputs so that the sum over 8 ranks is exact
 * and does not overflow. */
static inline uint64_t ref_sum_mag(mc_dtype_t d)
{
    switch (d) {
    case MC_INT8:
        return 15;
    case MC_UINT8:
        return 31;
    case MC_INT16:
        return 4000;
    case MC_UINT16:
        return 8000;
    case MC_INT32:
        return 200000000;
    case MC_UINT32:
        return 500000000;
    case MC_INT64:
    case MC_UINT64:
        return 1000000000000000ull;
    case MC_FLOAT16:
        return 120; /* 8 * 120 < 2048 */
    case MC_BFLOAT16:
        return 15; /* 8 * 15 < 256 */
    case MC_FLOAT32:
        return 100000; /* halves: 8 * 2e5 < 2^24 */
    case MC_FLOAT64:
        return 1000000000;
    case MC_FLOAT8_E4M3:
        return 2; /* |sum| <= 16 */
    case MC_FLOAT8_E5M2:
        return 1; /* |sum| <= 8 */
    default:
        return 1;
    }
}

/* Input of `rank` at element `idx` for a reduction with `op`. */
static inline ref_val_t ref_gen(mc_dtype_t d, mc_redop_t op, uint64_t seed,
                                int rank, size_t idx)
{
    uint64_t h = ref_hash3(seed, (uint64_t)rank, idx);
    ref_val_t v = {0, 0};
    int fl = ref_is_float(d);
    if (d == MC_BOOL) {
        /* AND-like ops get mostly ones, OR-like ops mostly zeros, so the
         * result is not constant. */
        if (op == MC_PROD || op == MC_MIN || op == MC_BAND)
            v.u = (h % 8) != 0;
        else if (op == MC_SUM || op == MC_MAX || op == MC_BOR)
            v.u = (h % 8) == 0;
        else
            v.u = h & 1;
        return v;
    }
    switch (op) {
    case MC_SUM:
    case MC_AVG: {
        uint64_t mag = ref_sum_mag(d);
        if (fl) {
            int64_t k = (int64_t)(h % (2 * mag + 1)) - (int64_t)mag;
            v.f = (double)k;
            if (d == MC_FLOAT32 || d == MC_FLOAT64) v.f = (double)k * 0.5;
        } else if (ref_is_signed(d)) {
            int64_t k = (int64_t)(h % (2 * mag + 1)) - (int64_t)mag;
            v.u = (uint64_t)k;
        } else {
            v.u = h % (mag + 1);
        }
        return v;
    }
    case MC_PROD: {
        int two = ((size_t)rank + idx) % 4 == 0;
        int neg = ref_is_signed(d) || fl ? (int)((h >> 8) & 1) : 0;
        if (h % 31 == 7) {
            v.u = 0;
            v.f = 0.0;
            return v;
        }
        if (fl) {
            double m = two ? ((h >> 9) & 1 ? 2.0 : 0.5) : 1.0;
            v.f = neg ? -m : m;
        } else {
            int64_t m = two ? 2 : 1;
            v.u = (uint64_t)(neg ? -m : m);
        }
        return v;
    }
    case MC_MIN:
    case MC_MAX:
    default:
        if (!fl) {
            v.u = ref_sext(d, h);
            return v;
        }
        for (;;) {
            double x = ref_bits_to_double(d, h & ref_width_mask(d));
            if (!isnan(x) && !(x == 0 && signbit(x))) {
                v.f = x;
                return v;
            }
            h = ref_mix(h);
        }
    }
}

/* dst = dst op src (exact, see the input rules above). */
static inline void ref_combine(mc_dtype_t d, mc_redop_t op, ref_val_t *dst,
                               ref_val_t src)
{
    if (d == MC_BOOL) {
        uint64_t a = dst->u != 0, b = src.u != 0;
        switch (op) {
        case MC_SUM:
        case MC_MAX:
        case MC_BOR:
            dst->u = a | b;
            break;
        case MC_PROD:
        case MC_MIN:
        case MC_BAND:
            dst->u = a & b;
            break;
        case MC_BXOR:
            dst->u = a ^ b;
            break;
        default:
            break;
        }
        return;
    }
    if (ref_is_float(d)) {
        switch (op) {
        case MC_SUM:
        case MC_AVG:
            dst->f += src.f;
            break;
        case MC_PROD:
            dst->f *= src.f;
            break;
        case MC_MIN:
            if (src.f < dst->f) dst->f = src.f;
            break;
        case MC_MAX:
            if (src.f > dst->f) dst->f = src.f;
            break;
        default:
            break;
        }
        return;
    }
    int sg = ref_is_signed(d);
    switch (op) {
    case MC_SUM:
    case MC_AVG:
        dst->u += src.u;
        break;
    case MC_PROD:
        dst->u = (uint64_t)((int64_t)dst->u * (int64_t)src.u);
        break;
    case MC_MIN:
        if (sg ? (int64_t)src.u < (int64_t)dst->u : src.u < dst->u)
            dst->u = src.u;
        break;
    case MC_MAX:
        if (sg ? (int64_t)src.u > (int64_t)dst->u : src.u > dst->u)
            dst->u = src.u;
        break;
    case MC_BAND:
        dst->u &= src.u;
        break;
    case MC_BOR:
        dst->u |= src.u;
        break;
    case MC_BXOR:
        dst->u ^= src.u;
        break;
    default:
        break;
    }
}

/* Bits of the reduction over ranks 0..nranks-1 of input element `idx`. */
static inline uint64_t ref_reduce_bits(mc_dtype_t d, mc_redop_t op,
                                       uint64_t seed, int nranks, size_t idx)
{
    ref_val_t acc = ref_gen(d, op, seed, 0, idx);
    for (int r = 1; r < nranks; r++)
        ref_combine(d, op, &acc, ref_gen(d, op, seed, r, idx));
    if (op != MC_AVG) return ref_bits(d, acc);
    if (d == MC_FLOAT64) return ref_double_to_bits(d, acc.f / (double)nranks);
    if (ref_is_float(d))
        return ref_float_to_bits(d, (float)acc.f / (float)nranks);
    if (ref_is_signed(d))
        return (uint64_t)((int64_t)acc.u / (int64_t)nranks) & ref_width_mask(d);
    return (acc.u / (uint64_t)nranks) & ref_width_mask(d);
}

/* AVG over fp16 and fp8: every rank divides its input by n first and the
 * ranks then sum (the engine, as NCCL does), so the bits depend on the
 * order of the sum, which differs between algorithms. */
static inline int ref_avg_premul(mc_dtype_t d, mc_redop_t op)
{
    return op == MC_AVG && (d == MC_FLOAT16 || d == MC_FLOAT8_E4M3 ||
                            d == MC_FLOAT8_E5M2);
}

/* One unit in the last place of the dtype at magnitude |v| (subnormals:
 * the smallest normal's). */
static inline double ref_ulp(mc_dtype_t d, double v)
{
    int mb = 23, emin = -126, e = 0;
    switch (d) {
    case MC_FLOAT16:
        mb = 10, emin = -14;
        break;
    case MC_BFLOAT16:
        mb = 7;
        break;
    case MC_FLOAT8_E4M3:
        mb = 3, emin = -6;
        break;
    case MC_FLOAT8_E5M2:
        mb = 2, emin = -14;
        break;
    default:
        break;
    }
    v = fabs(v);
    if (v > 0) {
        (void)frexp(v, &e);
        e -= 1;
    }
    if (v == 0 || e < emin) e = emin;
    return ldexp(1.0, e - mb);
}

/* Is `got` (bits) the ref_avg_premul average of element idx over ranks
 * 0..nranks-1? Within the exact average plus the rounding errors of the
 * divisions (half an ulp of each x/n) and of the nranks - 1 additions
 * (half an ulp of the largest partial any order can make). */
static inline int ref_avg_close(mc_dtype_t d, uint64_t seed, int nranks,
                                size_t idx, uint64_t got, double *exp_p)
{
    double sum = 0, abs_sum = 0, tol = 0;
    for (int r = 0; r < nranks; r++) {
        double x = ref_gen(d, MC_AVG, seed, r, idx).f;
        sum += x;
        abs_sum += fabs(x);
        tol += 0.5 * ref_ulp(d, x / nranks);
    }
    tol += 0.5 * (nranks - 1) * ref_ulp(d, abs_sum / nranks);
    tol *= 1.0 + 1e-6; /* the binary32 steps' own rounding */
    double g = ref_bits_to_double(d, got);
    *exp_p = sum / nranks;
    return fabs(g - *exp_p) <= tol;
}

/* Fill elements [0, n) of buf with rank's reduction input starting at input
 * index `base`. */
static inline void ref_fill_input(mc_dtype_t d, mc_redop_t op, uint64_t seed,
                                  int rank, size_t base, void *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ref_put_bits(d, buf, i,
                     ref_bits(d, ref_gen(d, op, seed, rank, base + i)));
}

/* Raw bytes for data-movement collectives: element idx of rank's data. */
static inline void ref_fill_bytes(mc_dtype_t d, uint64_t seed, int rank,
                                  size_t base, void *buf, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ref_put_bits(d, buf, i,
                     ref_hash3(seed ^ 0x5bd1e995u, (uint64_t)rank, base + i));
}

static inline uint64_t ref_fnv(uint64_t h, const void *buf, size_t bytes)
{
    const unsigned char *p = (const unsigned char *)buf;
    for (size_t i = 0; i < bytes; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Describe element bits for a failure message. */
static inline void ref_fmt(mc_dtype_t d, uint64_t bits, char *out, size_t cap)
{
    int w = (int)ref_dsize(d) * 2;
    if (ref_is_float(d))
        snprintf(out, cap, "0x%0*llx (%.9g)", w, (unsigned long long)bits,
                 ref_bits_to_double(d, bits));
    else if (ref_is_signed(d))
        snprintf(out, cap, "0x%0*llx (%lld)", w, (unsigned long long)bits,
                 (long long)ref_sext(d, bits));
    else
        snprintf(out, cap, "0x%0*llx (%llu)", w, (unsigned long long)bits,
                 (unsigned long long)bits);
}

#endif /* MC_TEST_REF_H */

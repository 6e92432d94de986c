/*
 * Internal: element-wise reductions and low-precision conversions.
 * All loops are written so the compiler vectorises them (-O3, restrict);
 * fp16/bf16/fp8 are widened to binary32, reduced, and rounded back with
 * round-to-nearest-even (see mooncake.h for the documented semantics).
 */
#ifndef MC_REDUCE_H
#define MC_REDUCE_H

#include <stddef.h>
#include <stdint.h>

#include "mooncake/mooncake.h"

#ifdef __cplusplus
extern "C" {
#endif

/* MC_OK if `op` is defined for `dtype` (bitwise ops: integers and bool
 * only); otherwise MC_ERR_INVALID_ARG with a message naming both. */
mc_status_t mc_redop_check(mc_dtype_t dtype, mc_redop_t op);

/* dst[i] = a[i] op b[i] for i < count. dst may equal a or b (exactly, not
 * partially overlapping). For MC_AVG this computes the SUM; call
 * mc_reduce_div once at the end. Must be commutative bit-for-bit:
 * mc_reduce(d, a, b) and mc_reduce(d, b, a) produce identical bytes (NaN
 * payloads aside). */
void mc_reduce(void *dst, const void *a, const void *b, size_t count,
               mc_dtype_t dtype, mc_redop_t op);

/* dst[i] = dst[i] / n (AVG finalisation; integers truncate toward zero,
 * floats divide in binary32/64 and round once). n >= 1. */
void mc_reduce_div(void *dst, size_t count, mc_dtype_t dtype, uint64_t n);
/* The same into dst from src (src may be dst): dst[i] = src[i] / n. */
void mc_reduce_div_to(void *dst, const void *src, size_t count,
                      mc_dtype_t dtype, uint64_t n);

/* memcpy with streaming (non-temporal) stores where the CPU has them: for
 * large copies whose destination is not read again soon, so they neither
 * read the destination lines first nor push out what the cache holds. */
void mc_copy_stream(void *dst, const void *src, size_t n);

/* Enable (1) or disable (0) the run-time selected AVX2/F16C kernels; returns
 * the previous setting. For tests that compare them with the portable
 * loops; not thread-safe against concurrent reductions. */
int mc_reduce_simd_enable(int on);

/* Scalar conversions (exposed for tests and the benchmark's checker). */
float mc_fp16_to_float(uint16_t h);
uint16_t mc_float_to_fp16(float f);
float mc_bf16_to_float(uint16_t h);
uint16_t mc_float_to_bf16(float f);
float mc_fp8e4m3_to_float(uint8_t v);
uint8_t mc_float_to_fp8e4m3(float f);
float mc_fp8e5m2_to_float(uint8_t v);
uint8_t mc_float_to_fp8e5m2(float f);

#ifdef __cplusplus
}
#endif
#endif /* MC_REDUCE_H */

/* Block and pipeline-chunk arithmetic (collectives/chunk.h), checked
 * exhaustively on small sizes against the properties the algorithms rely
 * on: blocks tile [0, total) in order, sizes differ by at most one, and
 * chunks tile a block with at least one (possibly empty) chunk. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "chunk.h"

static void test_block_range_tiles(void **state)
{
    (void)state;
    for (size_t total = 0; total <= 300; total++) {
        for (size_t parts = 1; parts <= 17; parts++) {
            size_t next = 0, lo = (size_t)-1, hi = 0;
            for (size_t i = 0; i < parts; i++) {
                size_t off, len;
                mc_block_range(total, parts, i, &off, &len);
                assert_int_equal(off, next); /* contiguous, in order */
                next = off + len;
                if (len < lo) lo = len;
                if (len > hi) hi = len;
                /* larger blocks come first */
                if (i > 0) {
                    size_t poff, plen;
                    mc_block_range(total, parts, i - 1, &poff, &plen);
                    assert_true(plen >= len);
                }
            }
            assert_int_equal(next, total); /* covers everything */
            assert_true(hi - lo <= 1);     /* balanced */
            assert_int_equal(lo, total / parts);
        }
    }
}

static void test_block_range_large(void **state)
{
    (void)state;
    size_t total = ((size_t)1 << 40) + 7, parts = 8, sum = 0;
    for (size_t i = 0; i < parts; i++) {
        size_t off, len;
        mc_block_range(total, parts, i, &off, &len);
        assert_int_equal(off, sum);
        sum += len;
    }
    assert_int_equal(sum, total);
}

static void test_chunks_tile(void **state)
{
    (void)state;
    for (size_t total = 0; total <= 200; total++) {
        for (size_t chunk = 0; chunk <= 23; chunk++) {
            size_t n = mc_chunk_count(total, chunk);
            size_t c = chunk ? chunk : 1;
            assert_true(n >= 1);
            assert_int_equal(n, total ? (total + c - 1) / c : 1);
            size_t next = 0;
            for (size_t i = 0; i < n; i++) {
                size_t off, len;
                mc_chunk_range(total, chunk, i, &off, &len);
                assert_int_equal(off, next);
                assert_true(len <= c);
                assert_true(len > 0 || total == 0);
                next = off + len;
            }
            assert_int_equal(next, total);
            /* past the end: empty, clamped */
            size_t off, len;
            mc_chunk_range(total, chunk, n + 3, &off, &len);
            assert_int_equal(off, total);
            assert_int_equal(len, 0);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_range_tiles),
        cmocka_unit_test(test_block_range_large),
        cmocka_unit_test(test_chunks_tile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Bootstrap store tests: the generic wrapper's validation, the file store's
 * semantics, and its atomicity across processes (forked) and threads.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mc_log.h"
#include "mooncake/mooncake.h"
#include "tests_common.h"

/* Per-test fixture: a fresh directory and a file store on it. */
struct fixture {
    char *dir;
    mc_store_h store;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (!f) return -1;
    f->dir = mc_test_mkdtemp();
    if (!f->dir) return -1;
    if (mc_store_file_create(f->dir, &f->store) != MC_OK) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    mc_store_destroy(f->store);
    mc_test_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* Clear this thread's last error so a test can tell that the call under test
 * set it. */
static void clear_error(void)
{
    mc_err(MC_OK, "%s", "");
}

static void get_str(mc_store_h s, const char *key, const char *want)
{
    char buf[256];
    size_t len = 0;
    assert_int_equal(mc_store_get(s, key, 1000, buf, sizeof(buf), &len), MC_OK);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(buf, want, len);
}

/* ------------------------------------------------------------------------ */

static void test_set_get_overwrite(void **state)
{
    struct fixture *f = *state;
    mc_store_h s = f->store;
    int exists = -1;
    assert_int_equal(mc_store_check(s, "k1", &exists), MC_OK);
    assert_int_equal(exists, 0);

    assert_int_equal(mc_store_set(s, "k1", "hello", 5), MC_OK);
    get_str(s, "k1", "hello");
    assert_int_equal(mc_store_check(s, "k1", &exists), MC_OK);
    assert_int_equal(exists, 1);

    /* Overwrite with a shorter value: no stale tail. */
    assert_int_equal(mc_store_set(s, "k1", "yo", 2), MC_OK);
    get_str(s, "k1", "yo");

    /* Empty value is a value (the key exists). */
    assert_int_equal(mc_store_set(s, "empty", NULL, 0), MC_OK);
    size_t len = 99;
    assert_int_equal(mc_store_get(s, "empty", 0, NULL, 0, &len), MC_OK);
    assert_int_equal(len, 0);

    /* Small cap: truncated copy, full length reported, rest untouched. */
    char buf[8];
    memset(buf, 'Z', sizeof(buf));
    assert_int_equal(mc_store_set(s, "long", "0123456789", 10), MC_OK);
    assert_int_equal(mc_store_get(s, "long", 0, buf, 4, &len), MC_OK);
    assert_int_equal(len, 10);
    assert_memory_equal(buf, "0123ZZZZ", 8);

    /* Binary values round-trip exactly. */
    unsigned char bin[256], out[256];
    for (int i = 0; i < 256; i++)
        bin[i] = (unsigned char)(255 - i);
    assert_int_equal(mc_store_set(s, "bin", bin, sizeof(bin)), MC_OK);
    assert_int_equal(mc_store_get(s, "bin", 0, out, sizeof(out), &len), MC_OK);
    assert_int_equal(len, 256);
    assert_memory_equal(out, bin, 256);

    /* del, and del of an absent key. */
    assert_int_equal(mc_store_del(s, "k1"), MC_OK);
    assert_int_equal(mc_store_check(s, "k1", &exists), MC_OK);
    assert_int_equal(exists, 0);
    assert_int_equal(mc_store_del(s, "k1"), MC_OK);
    assert_int_equal(mc_store_get(s, "k1", 0, buf, sizeof(buf), &len),
                     MC_ERR_TIMEOUT);
}

/* Keys with '/', '.' and '..' stay files directly inside dir. */
static void test_key_mapping_stays_in_dir(void **state)
{
    struct fixture *f = *state;
    static const char *keys[] = {"..",    ".",    "../escape", "a/b/c",
                                 "/lead", "a//b", "trail/",    "a/../b",
                                 ".lock", "k"};
    size_t n = sizeof(keys) / sizeof(keys[0]);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(
            mc_store_set(f->store, keys[i], keys[i], strlen(keys[i])), MC_OK);
    /* Every key keeps its own value (the mapping is injective). */
    for (size_t i = 0; i < n; i++)
        get_str(f->store, keys[i], keys[i]);

    /* Only regular files in dir, one per key plus the lock file. */
    DIR *d = opendir(f->dir);
    assert_non_null(d);
    struct dirent *e;
    int files = 0, others = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s", f->dir, e->d_name);
        struct stat sb;
        assert_int_equal(lstat(path, &sb), 0);
        if (S_ISREG(sb.st_mode))
            files++;
        else
            others++;
        /* no leftover temporaries */
        assert_null(strstr(e->d_name, ".tmp."));
    }
    closedir(d);
    assert_int_equal(others, 0);
    assert_int_equal(files, (int)n + 1);

    /* Nothing was written next to dir. */
    char parent_escape[4096];
    snprintf(parent_escape, sizeof(parent_escape), "%s/../escape", f->dir);
    struct stat sb;
    assert_int_not_equal(stat(parent_escape, &sb), 0);
}

static void test_get_timeout(void **state)
{
    struct fixture *f = *state;
    char buf[16];
    size_t len = 12345;
    clear_error();
    int64_t t0 = mc_now_us();
    assert_int_equal(
        mc_store_get(f->store, "missing", 200, buf, sizeof(buf), &len),
        MC_ERR_TIMEOUT);
    int64_t dt = mc_now_us() - t0;
    assert_true(dt >= 195000);
    assert_true(dt < 200000 + 1000000); /* bounded: well under a second late */
    assert_int_equal(len, 12345);       /* not written on failure */
    assert_true(mc_last_error()[0] != '\0');

    t0 = mc_now_us();
    assert_int_equal(
        mc_store_get(f->store, "missing", 0, buf, sizeof(buf), &len),
        MC_ERR_TIMEOUT);
    assert_true(mc_now_us() - t0 < 500000);
}

struct fork_arg {
    const char *dir;
    void *shared; /* MAP_SHARED anonymous memory for results */
    int n;
};

static int rank_late_setter(int rank, int size, void *p)
{
    struct fork_arg *a = p;
    mc_store_h s;
    if (mc_store_file_create(a->dir, &s) != MC_OK)
        return MC_TFAIL(rank, "create: %s", mc_last_error());
    int rc = 0;
    if (rank == 1) {
        usleep(300000);
        if (mc_store_set(s, "late", "arrived", 7) != MC_OK)
            rc = MC_TFAIL(rank, "set: %s", mc_last_error());
    } else {
        char buf[16];
        size_t len = 0;
        int64_t t0 = mc_now_us();
        mc_status_t st = mc_store_get(s, "late", 10000, buf, sizeof(buf), &len);
        int64_t dt = mc_now_us() - t0;
        if (st != MC_OK)
            rc = MC_TFAIL(rank, "get: %s", mc_last_error());
        else if (len != 7 || memcmp(buf, "arrived", 7))
            rc = MC_TFAIL(rank, "wrong value (len %zu)", len);
        else if (dt < 250000)
            rc = MC_TFAIL(rank, "get returned after %lld us, before the set",
                          (long long)dt);
        else if (dt > 5000000)
            rc = MC_TFAIL(rank, "get took %lld us", (long long)dt);
    }
    mc_store_destroy(s);
    (void)size;
    return rc;
}

static void test_get_blocks_until_set(void **state)
{
    struct fixture *f = *state;
    struct fork_arg a = {f->dir, NULL, 0};
    assert_int_equal(mc_test_fork(2, 30, rank_late_setter, &a), 0);
}

/* 16 MiB values whose every byte depends on a generation number written in
 * the first 8 bytes: a torn read (mix of two generations, or a prefix) shows
 * up as a mismatch. */
#define BIG_LEN ((size_t)16 << 20)
#define BIG_GENS 12

static unsigned char big_byte(uint64_t gen, size_t i)
{
    return (unsigned char)((gen * 131u + i * 7u + (i >> 12)) & 0xff);
}

static void big_fill(unsigned char *b, uint64_t gen)
{
    memcpy(b, &gen, 8);
    for (size_t i = 8; i < BIG_LEN; i++)
        b[i] = big_byte(gen, i);
}

static int rank_big(int rank, int size, void *p)
{
    struct fork_arg *a = p;
    volatile int *done = a->shared;
    mc_store_h s;
    if (mc_store_file_create(a->dir, &s) != MC_OK)
        return MC_TFAIL(rank, "create: %s", mc_last_error());
    unsigned char *b = malloc(BIG_LEN);
    int rc = 0;
    if (!b) {
        rc = MC_TFAIL(rank, "malloc");
        goto out;
    }
    if (rank == 0) {
        for (uint64_t g = 1; g <= BIG_GENS && !rc; g++) {
            big_fill(b, g);
            if (mc_store_set(s, "big", b, BIG_LEN) != MC_OK)
                rc = MC_TFAIL(rank, "set: %s", mc_last_error());
        }
        __atomic_store_n(done, 1, __ATOMIC_RELEASE);
    } else {
        int reads = 0, gens_seen = 0;
        uint64_t prev_gen = 0;
        while (!rc) {
            int last = __atomic_load_n(done, __ATOMIC_ACQUIRE);
            size_t len = 0;
            if (mc_store_get(s, "big", 20000, b, BIG_LEN, &len) != MC_OK) {
                rc = MC_TFAIL(rank, "get: %s", mc_last_error());
                break;
            }
            uint64_t g;
            memcpy(&g, b, 8);
            if (len != BIG_LEN || g < 1 || g > BIG_GENS) {
                rc = MC_TFAIL(rank, "bad len %zu / generation %llu", len,
                              (unsigned long long)g);
                break;
            }
            for (size_t i = 8; i < BIG_LEN; i++)
                if (b[i] != big_byte(g, i)) {
                    rc = MC_TFAIL(rank, "torn read: gen %llu byte %zu",
                                  (unsigned long long)g, i);
                    break;
                }
            reads++;
            if (g != prev_gen) gens_seen++;
            prev_gen = g;
            if (last) break; /* one full read after the writer finished */
        }
        if (!rc && reads < 1) rc = MC_TFAIL(rank, "no reads");
        if (getenv("MC_TEST_VERBOSE"))
            fprintf(stderr, "reader %d: %d reads, %d generation changes\n",
                    rank, reads, gens_seen);
    }
out:
    free(b);
    mc_store_destroy(s);
    (void)size;
    return rc;
}

static void test_large_values_atomic(void **state)
{
    struct fixture *f = *state;
    int *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(shared != MAP_FAILED);
    /* Seed a first value so readers do not just wait for the writer. */
    unsigned char *b = malloc(BIG_LEN);
    assert_non_null(b);
    big_fill(b, 1);
    assert_int_equal(mc_store_set(f->store, "big", b, BIG_LEN), MC_OK);
    free(b);
    struct fork_arg a = {f->dir, shared, 0};
    assert_int_equal(mc_test_fork(3, 120, rank_big, &a), 0);
    munmap(shared, 4096);
}

/* Every add's returned value is unique and together they are 1..N*M. */
#define ADD_PROCS 8
#define ADD_ITERS 200

static int rank_add(int rank, int size, void *p)
{
    struct fork_arg *a = p;
    unsigned char *seen = a->shared;
    mc_store_h s;
    if (mc_store_file_create(a->dir, &s) != MC_OK)
        return MC_TFAIL(rank, "create: %s", mc_last_error());
    int rc = 0;
    for (int i = 0; i < ADD_ITERS && !rc; i++) {
        int64_t v = 0;
        if (mc_store_add(s, "counter", 1, &v) != MC_OK)
            rc = MC_TFAIL(rank, "add: %s", mc_last_error());
        else if (v < 1 || v > (int64_t)size * ADD_ITERS)
            rc = MC_TFAIL(rank, "add returned %lld", (long long)v);
        else
            __atomic_fetch_add(&seen[v - 1], 1, __ATOMIC_RELAXED);
    }
    mc_store_destroy(s);
    return rc;
}

static void test_add_concurrent_processes(void **state)
{
    struct fixture *f = *state;
    size_t total = (size_t)ADD_PROCS * ADD_ITERS;
    unsigned char *seen = mmap(NULL, total, PROT_READ | PROT_WRITE,
                               MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(seen != MAP_FAILED);
    struct fork_arg a = {f->dir, seen, 0};
    assert_int_equal(mc_test_fork(ADD_PROCS, 120, rank_add, &a), 0);
    int64_t v = 0;
    assert_int_equal(mc_store_add(f->store, "counter", 0, &v), MC_OK);
    assert_int_equal(v, (int64_t)total);
    for (size_t i = 0; i < total; i++)
        assert_int_equal(seen[i], 1);
    get_str(f->store, "counter", "1600");
    munmap(seen, total);
}

struct thread_arg {
    mc_store_h shared_store; /* one handle used by all threads */
    const char *dir;         /* or a handle per thread */
    int rc;
};

static void *thread_add(void *p)
{
    struct thread_arg *t = p;
    mc_store_h own = NULL;
    if (mc_store_file_create(t->dir, &own) != MC_OK) {
        t->rc = 1;
        return NULL;
    }
    for (int i = 0; i < 100; i++) {
        mc_store_h s = (i & 1) ? own : t->shared_store;
        if (mc_store_add(s, "tcounter", 2, NULL) != MC_OK) t->rc = 1;
    }
    mc_store_destroy(own);
    return NULL;
}

static void test_add_concurrent_threads(void **state)
{
    struct fixture *f = *state;
    pthread_t th[4];
    struct thread_arg ta[4];
    for (int i = 0; i < 4; i++) {
        ta[i] = (struct thread_arg){f->store, f->dir, 0};
        assert_int_equal(pthread_create(&th[i], NULL, thread_add, &ta[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(ta[i].rc, 0);
    }
    int64_t v = -1;
    assert_int_equal(mc_store_add(f->store, "tcounter", -800, &v), MC_OK);
    assert_int_equal(v, 0);
    assert_int_equal(mc_store_add(f->store, "tcounter", -5, &v), MC_OK);
    assert_int_equal(v, -5);
    get_str(f->store, "tcounter", "-5");
}

static void test_add_semantics(void **state)
{
    struct fixture *f = *state;
    int64_t v = 0;
    assert_int_equal(mc_store_add(f->store, "n", 41, &v), MC_OK);
    assert_int_equal(v, 41);
    assert_int_equal(mc_store_add(f->store, "n", 1, &v), MC_OK);
    assert_int_equal(v, 42);
    /* set/get interoperate with add's decimal text */
    assert_int_equal(mc_store_set(f->store, "n", "-7", 2), MC_OK);
    assert_int_equal(mc_store_add(f->store, "n", 10, &v), MC_OK);
    assert_int_equal(v, 3);
    /* Non-numeric existing values are rejected and left unchanged. */
    static const char *bad[] = {"abc", "",   "12x",
                                "-",   "1 ", "99999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(mc_store_set(f->store, "bad", bad[i], strlen(bad[i])),
                         MC_OK);
        clear_error();
        v = 777;
        assert_int_equal(mc_store_add(f->store, "bad", 1, &v),
                         MC_ERR_INVALID_ARG);
        assert_int_equal(v, 777);
        assert_true(mc_last_error()[0] != '\0');
        get_str(f->store, "bad", bad[i]);
    }
    /* Overflow is refused. */
    assert_int_equal(mc_store_set(f->store, "big", "9223372036854775807", 19),
                     MC_OK);
    assert_int_equal(mc_store_add(f->store, "big", 1, &v), MC_ERR_INVALID_ARG);
    assert_int_equal(mc_store_add(f->store, "big", -1, &v), MC_OK);
    assert_int_equal(v, INT64_MAX - 1);
}

static void test_compare_set_semantics(void **state)
{
    struct fixture *f = *state;
    mc_store_h s = f->store;
    char cur[32];
    size_t len = 0;
    /* absent + expected "" -> set */
    assert_int_equal(
        mc_store_compare_set(s, "c", NULL, 0, "one", 3, cur, sizeof(cur), &len),
        MC_OK);
    assert_int_equal(len, 3);
    assert_memory_equal(cur, "one", 3);
    get_str(s, "c", "one");
    /* mismatch: unchanged, current value reported */
    assert_int_equal(mc_store_compare_set(s, "c", "two", 3, "three", 5, cur,
                                          sizeof(cur), &len),
                     MC_OK);
    assert_int_equal(len, 3);
    assert_memory_equal(cur, "one", 3);
    get_str(s, "c", "one");
    /* expected "" on an existing non-empty value: no swap */
    assert_int_equal(
        mc_store_compare_set(s, "c", NULL, 0, "x", 1, cur, sizeof(cur), &len),
        MC_OK);
    assert_memory_equal(cur, "one", 3);
    /* match: swapped; cap smaller than the value truncates the copy */
    memset(cur, 0, sizeof(cur));
    assert_int_equal(
        mc_store_compare_set(s, "c", "one", 3, "three", 5, cur, 2, &len),
        MC_OK);
    assert_int_equal(len, 5);
    assert_memory_equal(cur, "th\0", 3);
    get_str(s, "c", "three");
    /* absent key with non-empty expected: nothing created */
    assert_int_equal(mc_store_compare_set(s, "absent", "a", 1, "b", 1, cur,
                                          sizeof(cur), &len),
                     MC_OK);
    assert_int_equal(len, 0);
    int exists = 1;
    assert_int_equal(mc_store_check(s, "absent", &exists), MC_OK);
    assert_int_equal(exists, 0);
}

#define CAS_PROCS 6
#define CAS_ROUNDS 20

static int rank_cas(int rank, int size, void *p)
{
    struct fork_arg *a = p;
    int *won = a->shared; /* [round][rank], then one arrival count per round */
    int *arrive = won + CAS_ROUNDS * size;
    mc_store_h s;
    if (mc_store_file_create(a->dir, &s) != MC_OK)
        return MC_TFAIL(rank, "create: %s", mc_last_error());
    int rc = 0;
    for (int r = 0; r < CAS_ROUNDS && !rc; r++) {
        char key[32], mine[32], cur[32];
        snprintf(key, sizeof(key), "cas/%d", r);
        int n = snprintf(mine, sizeof(mine), "winner-%d", rank);
        size_t len = 0;
        /* Start each round together so the swaps really overlap. */
        __atomic_fetch_add(&arrive[r], 1, __ATOMIC_ACQ_REL);
        while (__atomic_load_n(&arrive[r], __ATOMIC_ACQUIRE) < size)
            sched_yield();
        if (mc_store_compare_set(s, key, NULL, 0, mine, (size_t)n, cur,
                                 sizeof(cur), &len) != MC_OK) {
            rc = MC_TFAIL(rank, "cas: %s", mc_last_error());
            break;
        }
        if (len == (size_t)n && !memcmp(cur, mine, len))
            won[r * size + rank] = 1;
        else if (len < 8 || memcmp(cur, "winner-", 7))
            rc = MC_TFAIL(rank, "cas returned a bogus value");
    }
    mc_store_destroy(s);
    return rc;
}

static void test_compare_set_race(void **state)
{
    struct fixture *f = *state;
    size_t bytes = sizeof(int) * (CAS_PROCS + 1) * CAS_ROUNDS;
    int *won = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    assert_true(won != MAP_FAILED);
    memset(won, 0, bytes);
    struct fork_arg a = {f->dir, won, 0};
    assert_int_equal(mc_test_fork(CAS_PROCS, 60, rank_cas, &a), 0);
    for (int r = 0; r < CAS_ROUNDS; r++) {
        int winners = 0, who = -1;
        for (int k = 0; k < CAS_PROCS; k++)
            if (won[r * CAS_PROCS + k]) winners++, who = k;
        assert_int_equal(winners, 1);
        char key[32], want[32];
        snprintf(key, sizeof(key), "cas/%d", r);
        snprintf(want, sizeof(want), "winner-%d", who);
        get_str(f->store, key, want);
    }
    munmap(won, bytes);
}

static void test_prefix_isolation(void **state)
{
    struct fixture *f = *state;
    mc_store_h a, b, ab;
    assert_int_equal(mc_store_prefix_create(f->store, "job-a", &a), MC_OK);
    assert_int_equal(mc_store_prefix_create(f->store, "job-b", &b), MC_OK);
    assert_int_equal(mc_store_prefix_create(a, "sub", &ab), MC_OK);

    assert_int_equal(mc_store_set(a, "x", "AAA", 3), MC_OK);
    assert_int_equal(mc_store_set(b, "x", "BB", 2), MC_OK);
    assert_int_equal(mc_store_set(ab, "x", "nested", 6), MC_OK);
    get_str(a, "x", "AAA");
    get_str(b, "x", "BB");
    get_str(ab, "x", "nested");
    /* Keys land in the base as prefix/key. */
    get_str(f->store, "job-a/x", "AAA");
    get_str(f->store, "job-b/x", "BB");
    get_str(f->store, "job-a/sub/x", "nested");
    get_str(a, "sub/x", "nested");

    int exists = 1;
    assert_int_equal(mc_store_check(f->store, "x", &exists), MC_OK);
    assert_int_equal(exists, 0);
    assert_int_equal(mc_store_set(a, "only-a", "1", 1), MC_OK);
    assert_int_equal(mc_store_check(b, "only-a", &exists), MC_OK);
    assert_int_equal(exists, 0);
    assert_int_equal(mc_store_check(a, "only-a", &exists), MC_OK);
    assert_int_equal(exists, 1);

    int64_t v = 0;
    assert_int_equal(mc_store_add(a, "n", 5, &v), MC_OK);
    assert_int_equal(mc_store_add(b, "n", 1, &v), MC_OK);
    assert_int_equal(v, 1);
    char cur[8];
    size_t len;
    assert_int_equal(
        mc_store_compare_set(b, "x", "BB", 2, "CC", 2, cur, sizeof(cur), &len),
        MC_OK);
    get_str(a, "x", "AAA");
    get_str(b, "x", "CC");

    assert_int_equal(mc_store_del(a, "x"), MC_OK);
    assert_int_equal(mc_store_check(a, "x", &exists), MC_OK);
    assert_int_equal(exists, 0);
    get_str(b, "x", "CC");

    /* Invalid keys through a prefix store are still rejected, and a
     * combined key over the limit too. */
    char k200[201];
    memset(k200, 'k', 200);
    k200[200] = '\0';
    assert_int_equal(mc_store_set(f->store, k200, "v", 1), MC_OK);
    clear_error();
    assert_int_equal(mc_store_set(a, k200, "v", 1), MC_ERR_INVALID_ARG);
    assert_true(mc_last_error()[0] != '\0');
    assert_int_equal(mc_store_set(a, "bad key", "v", 1), MC_ERR_INVALID_ARG);

    mc_store_h bad = (mc_store_h)0x1;
    static const char *bad_prefix[] = {"", "a b", "x%y", "\xff"};
    for (size_t i = 0; i < 4; i++) {
        clear_error();
        assert_int_equal(mc_store_prefix_create(f->store, bad_prefix[i], &bad),
                         MC_ERR_INVALID_ARG);
        assert_true(mc_last_error()[0] != '\0');
    }
    assert_int_equal(mc_store_prefix_create(f->store, NULL, &bad),
                     MC_ERR_INVALID_ARG);
    assert_int_equal(mc_store_prefix_create(NULL, "p", &bad),
                     MC_ERR_INVALID_ARG);
    assert_int_equal(mc_store_prefix_create(f->store, k200, &bad),
                     MC_ERR_INVALID_ARG);
    assert_ptr_equal(bad, (mc_store_h)0x1); /* untouched on failure */

    mc_store_destroy(ab);
    mc_store_destroy(a);
    mc_store_destroy(b);
}

#define EXPECT_INVALID(call)                                                   \
    do {                                                                       \
        clear_error();                                                         \
        assert_int_equal((call), MC_ERR_INVALID_ARG);                          \
        assert_true(mc_last_error()[0] != '\0');                               \
    } while (0)

static void test_invalid_args(void **state)
{
    struct fixture *f = *state;
    mc_store_h s = f->store;
    char buf[8];
    size_t len;
    int ex;
    int64_t v;
    EXPECT_INVALID(mc_store_set(NULL, "k", "v", 1));
    EXPECT_INVALID(mc_store_set(s, NULL, "v", 1));
    EXPECT_INVALID(mc_store_set(s, "", "v", 1));
    EXPECT_INVALID(mc_store_set(s, "sp ace", "v", 1));
    EXPECT_INVALID(mc_store_set(s, "per%cent", "v", 1));
    EXPECT_INVALID(mc_store_set(s, "new\nline", "v", 1));
    EXPECT_INVALID(mc_store_set(s, "back\\slash", "v", 1));
    EXPECT_INVALID(mc_store_set(s, "utf8-\xc3\xa9", "v", 1));
    EXPECT_INVALID(mc_store_set(s, "k", NULL, 1));
    char k201[202];
    memset(k201, 'a', 201);
    k201[201] = '\0';
    EXPECT_INVALID(mc_store_set(s, k201, "v", 1));
    /* Over 64 MiB: rejected before the buffer is touched. */
    EXPECT_INVALID(mc_store_set(s, "k", buf, ((size_t)64 << 20) + 1));
    EXPECT_INVALID(mc_store_compare_set(s, "k", buf, ((size_t)64 << 20) + 1,
                                        "d", 1, buf, sizeof(buf), &len));
    EXPECT_INVALID(mc_store_compare_set(
        s, "k", NULL, 0, buf, ((size_t)64 << 20) + 1, buf, sizeof(buf), &len));
    EXPECT_INVALID(
        mc_store_compare_set(s, "k", NULL, 3, "d", 1, buf, sizeof(buf), &len));
    EXPECT_INVALID(mc_store_compare_set(NULL, "k", NULL, 0, "d", 1, buf,
                                        sizeof(buf), &len));
    EXPECT_INVALID(mc_store_get(NULL, "k", 0, buf, sizeof(buf), &len));
    EXPECT_INVALID(mc_store_get(s, "a b", 0, buf, sizeof(buf), &len));
    EXPECT_INVALID(mc_store_get(s, "k", 0, NULL, 4, &len));
    EXPECT_INVALID(mc_store_check(s, "k", NULL));
    EXPECT_INVALID(mc_store_check(s, "", &ex));
    EXPECT_INVALID(mc_store_add(s, NULL, 1, &v));
    EXPECT_INVALID(mc_store_add(NULL, "k", 1, &v));
    EXPECT_INVALID(mc_store_del(s, "../*"));
    EXPECT_INVALID(mc_store_del(s, "a*"));
    /* Nothing was created by the rejected calls. */
    assert_int_equal(mc_store_check(s, "k", &ex), MC_OK);
    assert_int_equal(ex, 0);

    mc_store_h out = (mc_store_h)0x1;
    EXPECT_INVALID(mc_store_file_create(NULL, &out));
    EXPECT_INVALID(mc_store_file_create("", &out));
    EXPECT_INVALID(mc_store_file_create(f->dir, NULL));
    EXPECT_INVALID(mc_store_create(NULL, NULL, &out));
    assert_ptr_equal(out, (mc_store_h)0x1);
}

/* A user store: the wrapper must validate before calling it, copy the ops,
 * and call destroy exactly once. */
struct fake {
    int calls, destroyed;
    char last_key[256];
};

static mc_status_t fake_set(void *c, const char *k, const void *v, size_t l)
{
    struct fake *f = c;
    f->calls++;
    snprintf(f->last_key, sizeof(f->last_key), "%s", k);
    (void)v, (void)l;
    if (!strcmp(k, "fails")) /* with its own text */
        return mc_store_error(MC_ERR_STORE, "fake store: the disk is gone");
    return MC_OK;
}
static mc_status_t fake_get(void *c, const char *k, int64_t t, void *b,
                            size_t cap, size_t *len_p)
{
    struct fake *f = c;
    f->calls++;
    (void)k, (void)t, (void)b, (void)cap;
    *len_p = 3;
    return MC_OK;
}
static mc_status_t fake_check(void *c, const char *k, int *e)
{
    ((struct fake *)c)->calls++;
    (void)k;
    *e = 7; /* the wrapper normalises to 1 */
    return MC_OK;
}
static mc_status_t fake_cas(void *c, const char *k, const void *e, size_t el,
                            const void *d, size_t dl, void *cur, size_t cap,
                            size_t *len_p)
{
    ((struct fake *)c)->calls++;
    (void)k, (void)e, (void)el, (void)d, (void)dl, (void)cur, (void)cap;
    *len_p = 0;
    return MC_OK;
}
static mc_status_t fake_add(void *c, const char *k, int64_t d, int64_t *v)
{
    ((struct fake *)c)->calls++;
    (void)k;
    *v = d;
    return MC_OK;
}
static mc_status_t fake_del(void *c, const char *k)
{
    ((struct fake *)c)->calls++;
    (void)k;
    return MC_ERR_STORE; /* without a message: the wrapper adds one */
}
static void fake_destroy(void *c)
{
    ((struct fake *)c)->destroyed++;
}

/* A process that holds .lock and never lets go (stopped) fails a writer
 * after MOONCAKE_STORE_LOCK_WAIT_MS with MC_ERR_TIMEOUT naming the lock;
 * once it is gone the writer goes on. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void test_lock_held(void **state)
{
    const char *dir = ((struct fixture *)*state)->dir;
    char path[512];
    snprintf(path, sizeof(path), "%s/.lock", dir);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(path, O_RDWR | O_CREAT, 0644);
        if (fd < 0 || flock(fd, LOCK_EX) != 0) _exit(1);
        if (write(pfd[1], "x", 1) != 1) _exit(1);
        pause();
        _exit(0);
    }
    char c;
    assert_int_equal(read(pfd[0], &c, 1), 1);
    setenv("MOONCAKE_STORE_LOCK_WAIT_MS", "300", 1);
    mc_store_h s;
    assert_int_equal(mc_store_file_create(dir, &s), MC_OK);
    double t0 = now_s();
    mc_status_t st = mc_store_set(s, "held", "v", 1);
    double took = now_s() - t0;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    unsetenv("MOONCAKE_STORE_LOCK_WAIT_MS");
    assert_int_equal(st, MC_ERR_TIMEOUT);
    assert_non_null(strstr(mc_last_error(), ".lock"));
    assert_true(took >= 0.25 && took < 5.0);
    assert_int_equal(mc_store_set(s, "held", "v", 1), MC_OK);
    mc_store_destroy(s);
    close(pfd[0]);
    close(pfd[1]);
}

static void test_user_store(void **state)
{
    (void)state;
    struct fake fk = {0};
    mc_store_ops_t ops = {
        .size = sizeof(ops),
        .set = fake_set,
        .get = fake_get,
        .check = fake_check,
        .compare_set = fake_cas,
        .add = fake_add,
        .del = fake_del,
        .destroy = fake_destroy,
    };
    mc_store_h s = NULL;
    /* size and every slot are checked */
    mc_store_ops_t bad = ops;
    bad.size = sizeof(ops) - 8;
    EXPECT_INVALID(mc_store_create(&bad, &fk, &s));
    void *slots[] = {&bad.set, &bad.get, &bad.check,  &bad.compare_set,
                     &bad.add, &bad.del, &bad.destroy};
    for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
        bad = ops;
        memset((char *)&bad + ((char *)slots[i] - (char *)&bad), 0,
               sizeof(void *));
        EXPECT_INVALID(mc_store_create(&bad, &fk, &s));
    }
    assert_null(s);

    assert_int_equal(mc_store_create(&ops, &fk, &s), MC_OK);
    memset(&ops, 0, sizeof(ops)); /* the store keeps its own copy */
    EXPECT_INVALID(mc_store_set(s, "no spaces", "v", 1));
    assert_int_equal(fk.calls, 0);
    assert_int_equal(mc_store_set(s, "a/b", "v", 1), MC_OK);
    assert_string_equal(fk.last_key, "a/b");
    int ex = 0;
    assert_int_equal(mc_store_check(s, "a", &ex), MC_OK);
    assert_int_equal(ex, 1);
    int64_t v = 0;
    assert_int_equal(mc_store_add(s, "a", 9, &v), MC_OK);
    assert_int_equal(v, 9);
    /* a failure's text is this call's, never an older failure's */
    EXPECT_INVALID(mc_store_set(s, "no spaces", "v", 1));
    assert_int_equal(mc_store_del(s, "a"), MC_ERR_STORE);
    if (!strstr(mc_last_error(), "mc_store_del('a')"))
        fail_msg("del failed without text; the error says: %s",
                 mc_last_error());
    assert_int_equal(mc_store_set(s, "fails", "v", 1), MC_ERR_STORE);
    assert_string_equal(mc_last_error(), "fake store: the disk is gone");
    /* a call that succeeds leaves the caller's error text as it was */
    assert_int_equal(mc_store_set(s, "a/c", "v", 1), MC_OK);
    assert_string_equal(mc_last_error(), "fake store: the disk is gone");
    assert_int_equal(fk.calls, 6);
    mc_store_destroy(s);
    assert_int_equal(fk.destroyed, 1);
    mc_store_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest basic[] = {
        cmocka_unit_test_setup_teardown(test_set_get_overwrite, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_key_mapping_stays_in_dir, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_get_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_semantics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compare_set_semantics, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_prefix_isolation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_args, setup, teardown),
        cmocka_unit_test(test_user_store),
        cmocka_unit_test_setup_teardown(test_lock_held, setup, teardown),
    };
    const struct CMUnitTest concurrent[] = {
        cmocka_unit_test_setup_teardown(test_get_blocks_until_set, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_add_concurrent_processes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_add_concurrent_threads, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_compare_set_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_values_atomic, setup,
                                        teardown),
    };
    int failed = cmocka_run_group_tests_name("store_basic", basic, NULL, NULL);
    failed +=
        cmocka_run_group_tests_name("store_concurrent", concurrent, NULL, NULL);
    return failed ? 1 : 0;
}

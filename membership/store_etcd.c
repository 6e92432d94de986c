/*
 * The bootstrap store on etcd: every key lives at <prefix><key>. set is a
 * put, get polls a range until the key exists, compare_set and add are
 * single-key transactions (on the value, on the mod revision).
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "etcd.h"
#include "mc_log.h"
#include "mooncake/mooncake.h"

typedef struct {
    mc_etcd_t *e;
    char *prefix;
} estore_t;

static char *full_key(estore_t *s, const char *key)
{
    size_t n = strlen(s->prefix) + strlen(key) + 1;
    char *k = malloc(n);
    if (k) snprintf(k, n, "%s%s", s->prefix, key);
    return k;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define KEY_OR_FAIL(k, s, key)                                                 \
    char *k = full_key(s, key);                                                \
    if (!k) return mc_err(MC_ERR_NO_MEMORY, "etcd store: out of memory")

static mc_status_t es_set(void *ctx, const char *key, const void *val,
                          size_t len)
{
    estore_t *s = ctx;
    KEY_OR_FAIL(k, s, key);
    mc_status_t st = mc_etcd_put(s->e, k, val, len, 0, NULL);
    free(k);
    return st;
}

static void copy_out(const mc_etcd_kv_t *kv, void *buf, size_t cap,
                     size_t *len_p)
{
    size_t n = kv && kv->key ? kv->vlen : 0;
    if (buf && n) memcpy(buf, kv->val, n < cap ? n : cap);
    *len_p = n;
}

static mc_status_t es_get(void *ctx, const char *key, int64_t timeout_ms,
                          void *buf, size_t cap, size_t *len_p)
{
    estore_t *s = ctx;
    KEY_OR_FAIL(k, s, key);
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : now_ms() + timeout_ms;
    useconds_t nap = 1000;
    for (;;) {
        mc_etcd_kv_t *kvs;
        int n;
        mc_status_t st = mc_etcd_get(s->e, k, 0, &kvs, &n, NULL);
        if (st != MC_OK) {
            free(k);
            return st;
        }
        if (n > 0) {
            copy_out(&kvs[0], buf, cap, len_p);
            mc_etcd_kvs_free(kvs, n);
            free(kvs);
            free(k);
            return MC_OK;
        }
        if (now_ms() >= deadline) {
            mc_status_t r = mc_err(MC_ERR_TIMEOUT,
                                   "etcd store: key '%s' did not appear "
                                   "within %" PRId64 " ms",
                                   k, timeout_ms);
            free(k);
            return r;
        }
        usleep(nap);
        if (nap < 20000) nap *= 2;
    }
}

static mc_status_t es_check(void *ctx, const char *key, int *exists_p)
{
    estore_t *s = ctx;
    KEY_OR_FAIL(k, s, key);
    mc_etcd_kv_t *kvs;
    int n;
    mc_status_t st = mc_etcd_get(s->e, k, 0, &kvs, &n, NULL);
    free(k);
    if (st != MC_OK) return st;
    *exists_p = n > 0;
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    return MC_OK;
}

static mc_status_t es_compare_set(void *ctx, const char *key,
                                  const void *expected, size_t expected_len,
                                  const void *desired, size_t desired_len,
                                  void *cur, size_t cap, size_t *cur_len_p)
{
    estore_t *s = ctx;
    KEY_OR_FAIL(k, s, key);
    int ok = 0;
    mc_etcd_kv_t now;
    /* an absent key matches an empty expectation */
    mc_status_t st =
        mc_etcd_cas_val(s->e, k, expected_len ? expected : NULL, expected_len,
                        desired, desired_len, 0, &ok, NULL, &now);
    free(k);
    if (st != MC_OK) return st;
    if (ok) {
        size_t n = desired_len;
        if (cur && n) memcpy(cur, desired, n < cap ? n : cap);
        *cur_len_p = n;
    } else {
        copy_out(&now, cur, cap, cur_len_p);
        mc_etcd_kvs_free(&now, 1);
    }
    return MC_OK;
}

static mc_status_t es_add(void *ctx, const char *key, int64_t delta,
                          int64_t *value_p)
{
    estore_t *s = ctx;
    KEY_OR_FAIL(k, s, key);
    mc_status_t st;
    for (int tries = 0;; tries++) {
        mc_etcd_kv_t *kvs;
        int n;
        st = mc_etcd_get(s->e, k, 0, &kvs, &n, NULL);
        if (st != MC_OK) break;
        int64_t v = 0, rev = 0;
        if (n > 0) {
            char *end;
            v = strtoll(kvs[0].val, &end, 10);
            rev = kvs[0].mod_rev;
            if (*end != '\0' || kvs[0].vlen == 0) {
                st = mc_err(MC_ERR_INVALID_ARG,
                            "etcd store: add on '%s', whose value is not a "
                            "decimal integer",
                            k);
                mc_etcd_kvs_free(kvs, n);
                free(kvs);
                break;
            }
        }
        mc_etcd_kvs_free(kvs, n);
        free(kvs);
        char t[32];
        int len = snprintf(t, sizeof(t), "%" PRId64, v + delta);
        int ok = 0;
        st = mc_etcd_cas_rev(s->e, k, rev, t, (size_t)len, 0, &ok, NULL, NULL);
        if (st != MC_OK) break;
        if (ok) {
            *value_p = v + delta;
            break;
        }
        if (tries > 1000) {
            st = mc_err(MC_ERR_TIMEOUT,
                        "etcd store: add on '%s' lost 1000 races in a row", k);
            break;
        }
    }
    free(k);
    return st;
}

static mc_status_t es_del(void *ctx, const char *key)
{
    estore_t *s = ctx;
    KEY_OR_FAIL(k, s, key);
    mc_status_t st = mc_etcd_del(s->e, k, 0, NULL);
    free(k);
    return st;
}

static void es_destroy(void *ctx)
{
    estore_t *s = ctx;
    mc_etcd_close(s->e);
    free(s->prefix);
    free(s);
}

mc_status_t mc_store_etcd_create(const char *endpoints, const char *prefix,
                                 int64_t timeout_ms, mc_store_h *store_p)
{
    if (!endpoints || !store_p)
        return mc_err(MC_ERR_INVALID_ARG,
                      "store_etcd_create: endpoints and store_p needed");
    estore_t *s = calloc(1, sizeof(*s));
    if (!s) return mc_err(MC_ERR_NO_MEMORY, "etcd store: out of memory");
    s->prefix = strdup(prefix ? prefix : "/mooncake/");
    mc_status_t st = s->prefix ? mc_etcd_open(endpoints, timeout_ms, &s->e)
                               : MC_ERR_NO_MEMORY;
    if (st != MC_OK) {
        free(s->prefix);
        free(s);
        return st;
    }
    static const mc_store_ops_t ops = {.size = sizeof(mc_store_ops_t),
                                       .set = es_set,
                                       .get = es_get,
                                       .check = es_check,
                                       .compare_set = es_compare_set,
                                       .add = es_add,
                                       .del = es_del,
                                       .destroy = es_destroy};
    st = mc_store_create(&ops, s, store_p);
    if (st != MC_OK) es_destroy(s);
    return st;
}

/*
 * Bootstrap store: the generic handle, argument validation, and the prefix
 * store. Every public mc_store_* call validates its arguments here so that
 * implementations (file store, torch's c10d::Store shim) only ever see
 * well-formed keys and bounded lengths.
 */
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mc_log.h"
#include "mooncake/mooncake.h"

/* Keys are short path-like names; values are bounded so a corrupt or hostile
 * store cannot make a rank allocate without limit. */
#define MC_STORE_KEY_MAX 200
#define MC_STORE_VALUE_MAX ((size_t)64 << 20)

struct mc_store {
    mc_store_ops_t ops;
    void *ctx;
    _Atomic int refs; /* mc_store_ref / mc_store_destroy */
};

/* Returns the key's length, or 0 if it is not a valid key. `what` names the
 * argument in the error message ("key", "prefix"). */
static size_t store_check_name(const char *name, const char *what,
                               const char *fn)
{
    if (!name) {
        mc_err(MC_ERR_INVALID_ARG, "%s: %s is NULL", fn, what);
        return 0;
    }
    size_t n = strnlen(name, MC_STORE_KEY_MAX + 1);
    if (n == 0) {
        mc_err(MC_ERR_INVALID_ARG, "%s: %s is empty", fn, what);
        return 0;
    }
    if (n > MC_STORE_KEY_MAX) {
        mc_err(MC_ERR_INVALID_ARG, "%s: %s '%.40s...' is longer than %d bytes",
               fn, what, name, MC_STORE_KEY_MAX);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '/' ||
                 c == '-';
        if (!ok) {
            mc_err(MC_ERR_INVALID_ARG,
                   "%s: %s '%s' has character 0x%02x at offset %zu (allowed: "
                   "A-Z a-z 0-9 . _ / -)",
                   fn, what, name, c, i);
            return 0;
        }
    }
    return n;
}

static mc_status_t store_check(mc_store_h s, const char *key, const char *fn)
{
    if (!s) return mc_err(MC_ERR_INVALID_ARG, "%s: store is NULL", fn);
    if (!store_check_name(key, "key", fn)) return MC_ERR_INVALID_ARG;
    return MC_OK;
}

static mc_status_t store_check_len(size_t len, const char *what, const char *fn)
{
    if (len > MC_STORE_VALUE_MAX)
        return mc_err(MC_ERR_INVALID_ARG,
                      "%s: %s length %zu exceeds the store limit of %zu bytes",
                      fn, what, len, MC_STORE_VALUE_MAX);
    return MC_OK;
}

/* A user store may fail without calling mc_err; make sure the thread's last
 * error then says something about this call rather than an older failure.
 * Every call below runs its callback between store_begin and store_end:
 * the text is cleared for the callback, so what is left after a failure
 * was written by this call; after a success the caller's text is put back
 * (an error path that cleans up through the store keeps its own). */
typedef struct {
    char saved[1024];
} store_err_t;

static void store_begin(store_err_t *e)
{
    snprintf(e->saved, sizeof(e->saved), "%s", mc_last_error());
    mc_err_clear();
}

static mc_status_t store_end(store_err_t *e, mc_status_t st, const char *fn,
                             const char *key)
{
    if (st >= 0)
        mc_err_restore(e->saved);
    else if (mc_last_error()[0] == '\0')
        mc_err(st, "%s('%s'): %s", fn, key, mc_status_str(st));
    return st;
}

mc_status_t mc_store_error(mc_status_t st, const char *msg)
{
    return mc_err(st, "%s", msg ? msg : mc_status_str(st));
}

mc_status_t mc_store_create(const mc_store_ops_t *ops, void *ctx,
                            mc_store_h *store_p)
{
    if (!ops || !store_p)
        return mc_err(MC_ERR_INVALID_ARG, "mc_store_create: %s is NULL",
                      !ops ? "ops" : "store_p");
    if (ops->size < sizeof(mc_store_ops_t))
        return mc_err(MC_ERR_INVALID_ARG,
                      "mc_store_create: ops->size %zu is smaller than "
                      "sizeof(mc_store_ops_t) = %zu",
                      ops->size, sizeof(mc_store_ops_t));
    const char *missing = !ops->set           ? "set"
                          : !ops->get         ? "get"
                          : !ops->check       ? "check"
                          : !ops->compare_set ? "compare_set"
                          : !ops->add         ? "add"
                          : !ops->del         ? "del"
                          : !ops->destroy     ? "destroy"
                                              : NULL;
    if (missing)
        return mc_err(MC_ERR_INVALID_ARG, "mc_store_create: ops->%s is NULL",
                      missing);
    struct mc_store *s = calloc(1, sizeof(*s));
    if (!s) return mc_err(MC_ERR_NO_MEMORY, "mc_store_create: out of memory");
    memcpy(&s->ops, ops, sizeof(s->ops));
    s->ops.size = sizeof(s->ops);
    s->ctx = ctx;
    atomic_init(&s->refs, 1);
    *store_p = s;
    return MC_OK;
}

mc_store_h mc_store_ref(mc_store_h store)
{
    if (store) atomic_fetch_add_explicit(&store->refs, 1, memory_order_relaxed);
    return store;
}

void mc_store_destroy(mc_store_h store)
{
    if (!store) return;
    if (atomic_fetch_sub_explicit(&store->refs, 1, memory_order_acq_rel) != 1)
        return;
    store->ops.destroy(store->ctx);
    free(store);
}

mc_status_t mc_store_set(mc_store_h s, const char *key, const void *val,
                         size_t len)
{
    MC_CHECK(store_check(s, key, "mc_store_set"));
    MC_CHECK(store_check_len(len, "value", "mc_store_set"));
    if (!val && len)
        return mc_err(MC_ERR_INVALID_ARG, "mc_store_set('%s'): val is NULL",
                      key);
    store_err_t e;
    store_begin(&e);
    return store_end(&e, s->ops.set(s->ctx, key, val, len), "mc_store_set",
                     key);
}

mc_status_t mc_store_get(mc_store_h s, const char *key, int64_t timeout_ms,
                         void *buf, size_t cap, size_t *len_p)
{
    MC_CHECK(store_check(s, key, "mc_store_get"));
    if (!buf && cap)
        return mc_err(MC_ERR_INVALID_ARG,
                      "mc_store_get('%s'): buf is NULL but cap is %zu", key,
                      cap);
    size_t len = 0;
    store_err_t e;
    store_begin(&e);
    mc_status_t st = store_end(
        &e, s->ops.get(s->ctx, key, timeout_ms, buf, cap, &len),
        "mc_store_get", key);
    if (st < 0) return st;
    if (len > MC_STORE_VALUE_MAX)
        return mc_err(MC_ERR_PROTOCOL,
                      "mc_store_get('%s'): store reported a %zu-byte value "
                      "(limit %zu)",
                      key, len, MC_STORE_VALUE_MAX);
    if (len_p) *len_p = len;
    return MC_OK;
}

mc_status_t mc_store_check(mc_store_h s, const char *key, int *exists_p)
{
    MC_CHECK(store_check(s, key, "mc_store_check"));
    if (!exists_p)
        return mc_err(MC_ERR_INVALID_ARG,
                      "mc_store_check('%s'): exists_p is NULL", key);
    int exists = 0;
    store_err_t e;
    store_begin(&e);
    mc_status_t st = store_end(&e, s->ops.check(s->ctx, key, &exists),
                               "mc_store_check", key);
    if (st < 0) return st;
    *exists_p = exists ? 1 : 0;
    return MC_OK;
}

mc_status_t mc_store_compare_set(mc_store_h s, const char *key,
                                 const void *expected, size_t expected_len,
                                 const void *desired, size_t desired_len,
                                 void *cur, size_t cap, size_t *cur_len_p)
{
    static const char fn[] = "mc_store_compare_set";
    MC_CHECK(store_check(s, key, fn));
    MC_CHECK(store_check_len(expected_len, "expected", fn));
    MC_CHECK(store_check_len(desired_len, "desired", fn));
    if ((!expected && expected_len) || (!desired && desired_len) ||
        (!cur && cap))
        return mc_err(MC_ERR_INVALID_ARG,
                      "%s('%s'): %s is NULL with a "
                      "non-zero length",
                      fn, key,
                      (!expected && expected_len) ? "expected"
                      : (!desired && desired_len) ? "desired"
                                                  : "cur");
    size_t len = 0;
    store_err_t e;
    store_begin(&e);
    mc_status_t st = store_end(
        &e,
        s->ops.compare_set(s->ctx, key, expected, expected_len, desired,
                           desired_len, cur, cap, &len),
        fn, key);
    if (st < 0) return st;
    if (cur_len_p) *cur_len_p = len;
    return MC_OK;
}

mc_status_t mc_store_add(mc_store_h s, const char *key, int64_t delta,
                         int64_t *value_p)
{
    MC_CHECK(store_check(s, key, "mc_store_add"));
    int64_t v = 0;
    store_err_t e;
    store_begin(&e);
    mc_status_t st =
        store_end(&e, s->ops.add(s->ctx, key, delta, &v), "mc_store_add", key);
    if (st < 0) return st;
    if (value_p) *value_p = v;
    return MC_OK;
}

mc_status_t mc_store_del(mc_store_h s, const char *key)
{
    MC_CHECK(store_check(s, key, "mc_store_del"));
    store_err_t e;
    store_begin(&e);
    return store_end(&e, s->ops.del(s->ctx, key), "mc_store_del", key);
}

/* ------------------------------------------------------------------------ */
/* Prefix store: "prefix/key" on a base store.                              */
/* ------------------------------------------------------------------------ */

struct store_prefix {
    mc_store_h base;
    size_t plen;
    char prefix[MC_STORE_KEY_MAX + 1];
};

/* The combined key may exceed the key limit; the base store's wrapper then
 * rejects it with a message naming the whole key. */
typedef char store_prefix_key_t[2 * MC_STORE_KEY_MAX + 2];

static void prefix_key(const struct store_prefix *p, const char *key,
                       store_prefix_key_t out)
{
    memcpy(out, p->prefix, p->plen);
    out[p->plen] = '/';
    size_t klen = strnlen(key, MC_STORE_KEY_MAX);
    memcpy(out + p->plen + 1, key, klen);
    out[p->plen + 1 + klen] = '\0';
}

static mc_status_t prefix_set(void *ctx, const char *key, const void *val,
                              size_t len)
{
    struct store_prefix *p = ctx;
    store_prefix_key_t k;
    prefix_key(p, key, k);
    return mc_store_set(p->base, k, val, len);
}

static mc_status_t prefix_get(void *ctx, const char *key, int64_t timeout_ms,
                              void *buf, size_t cap, size_t *len_p)
{
    struct store_prefix *p = ctx;
    store_prefix_key_t k;
    prefix_key(p, key, k);
    return mc_store_get(p->base, k, timeout_ms, buf, cap, len_p);
}

static mc_status_t prefix_check(void *ctx, const char *key, int *exists_p)
{
    struct store_prefix *p = ctx;
    store_prefix_key_t k;
    prefix_key(p, key, k);
    return mc_store_check(p->base, k, exists_p);
}

static mc_status_t prefix_compare_set(void *ctx, const char *key,
                                      const void *expected, size_t expected_len,
                                      const void *desired, size_t desired_len,
                                      void *cur, size_t cap, size_t *cur_len_p)
{
    struct store_prefix *p = ctx;
    store_prefix_key_t k;
    prefix_key(p, key, k);
    return mc_store_compare_set(p->base, k, expected, expected_len, desired,
                                desired_len, cur, cap, cur_len_p);
}

static mc_status_t prefix_add(void *ctx, const char *key, int64_t delta,
                              int64_t *value_p)
{
    struct store_prefix *p = ctx;
    store_prefix_key_t k;
    prefix_key(p, key, k);
    return mc_store_add(p->base, k, delta, value_p);
}

static mc_status_t prefix_del(void *ctx, const char *key)
{
    struct store_prefix *p = ctx;
    store_prefix_key_t k;
    prefix_key(p, key, k);
    return mc_store_del(p->base, k);
}

static void prefix_destroy(void *ctx)
{
    struct store_prefix *p = ctx;
    mc_store_destroy(p->base);
    free(ctx);
}

static const mc_store_ops_t store_prefix_ops = {
    .size = sizeof(mc_store_ops_t),
    .set = prefix_set,
    .get = prefix_get,
    .check = prefix_check,
    .compare_set = prefix_compare_set,
    .add = prefix_add,
    .del = prefix_del,
    .destroy = prefix_destroy,
};

mc_status_t mc_store_prefix_create(mc_store_h base, const char *prefix,
                                   mc_store_h *store_p)
{
    static const char fn[] = "mc_store_prefix_create";
    if (!base) return mc_err(MC_ERR_INVALID_ARG, "%s: base is NULL", fn);
    if (!store_p) return mc_err(MC_ERR_INVALID_ARG, "%s: store_p is NULL", fn);
    size_t plen = store_check_name(prefix, "prefix", fn);
    if (!plen) return MC_ERR_INVALID_ARG;
    /* Leave room for "/" and at least one key character. */
    if (plen > MC_STORE_KEY_MAX - 2)
        return mc_err(MC_ERR_INVALID_ARG,
                      "%s: prefix '%s' leaves no room for keys (max %d bytes)",
                      fn, prefix, MC_STORE_KEY_MAX - 2);
    struct store_prefix *p = calloc(1, sizeof(*p));
    if (!p) return mc_err(MC_ERR_NO_MEMORY, "%s: out of memory", fn);
    p->base = mc_store_ref(base);
    p->plen = plen;
    memcpy(p->prefix, prefix, plen);
    mc_status_t st = mc_store_create(&store_prefix_ops, p, store_p);
    if (st < 0) goto free_prefix;
    return MC_OK;

free_prefix:
    mc_store_destroy(p->base);
    free(p);
    return st;
}

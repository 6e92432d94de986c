/*
 * A small etcd v3 client over libcurl and etcd's JSON gateway (/v3/...).
 *
 * Unary calls (put, range, delete, txn, leases) share one connection per
 * client, serialised by a lock; every call has a timeout and fails over to
 * the next endpoint when one does not answer. Watches run on their own
 * thread with their own connection and resume from the last revision seen
 * (on another endpoint if needed; also when a quiet stream's endpoint does
 * not answer a read: a stopped member, or one cut off from its leader).
 * Responses are bounded (MC_ETCD_MAX_RESP).
 *
 * Keys are C strings; values are bytes. Gateway quirks handled here: keys
 * and values are base64, int64 fields are JSON strings, a failed txn omits
 * "succeeded", an empty range omits "kvs", PUT events have no "type".
 */
#ifndef MC_ETCD_H
#define MC_ETCD_H

#include <stddef.h>
#include <stdint.h>

#include <mooncake/mooncake.h>

#define MC_ETCD_MAX_RESP ((size_t)64 << 20) /* bytes of one response */

typedef struct mc_etcd mc_etcd_t;
typedef struct mc_etcd_watch mc_etcd_watch_t;

typedef struct mc_etcd_kv {
    char *key;   /* NUL-terminated */
    void *val;   /* NUL-terminated too (not counted in vlen) */
    size_t vlen;
    int64_t create_rev, mod_rev, version, lease;
} mc_etcd_kv_t;

/* endpoints: comma-separated base URLs ("http://127.0.0.1:2379,..." or
 * "127.0.0.1:2379"); timeout_ms bounds each call on each endpoint. */
mc_status_t mc_etcd_open(const char *endpoints, int64_t timeout_ms,
                         mc_etcd_t **e_p);
void mc_etcd_close(mc_etcd_t *e);

/* lease: 0 for none. *rev_p (may be NULL): revision of the put. */
mc_status_t mc_etcd_put(mc_etcd_t *e, const char *key, const void *val,
                        size_t len, int64_t lease, int64_t *rev_p);

/* The key, or (prefix = 1) every key starting with it, in key order.
 * *kvs_p is NULL when there are none; free with mc_etcd_kvs_free. *rev_p
 * (may be NULL): the store's revision at the read. */
mc_status_t mc_etcd_get(mc_etcd_t *e, const char *key, int prefix,
                        mc_etcd_kv_t **kvs_p, int *n_p, int64_t *rev_p);
void mc_etcd_kvs_free(mc_etcd_kv_t *kvs, int n);

/* *ndel_p (may be NULL): keys deleted. */
mc_status_t mc_etcd_del(mc_etcd_t *e, const char *key, int prefix,
                        int64_t *ndel_p);

/* Transaction on one key: if the condition holds, put `val` (with lease);
 * *ok_p says whether it did. On failure *cur_p (may be NULL) receives the
 * key's current state (key NULL when absent; free with mc_etcd_kvs_free(
 * cur, 1)). Conditions:
 *   mc_etcd_cas_rev: the key's mod revision equals mod_rev (0: absent);
 *   mc_etcd_cas_val: the key's value equals expect (NULL: absent). */
mc_status_t mc_etcd_cas_rev(mc_etcd_t *e, const char *key, int64_t mod_rev,
                            const void *val, size_t len, int64_t lease,
                            int *ok_p, int64_t *rev_p, mc_etcd_kv_t *cur_p);
mc_status_t mc_etcd_cas_val(mc_etcd_t *e, const char *key, const void *expect,
                            size_t elen, const void *val, size_t len,
                            int64_t lease, int *ok_p, int64_t *rev_p,
                            mc_etcd_kv_t *cur_p);

mc_status_t mc_etcd_lease_grant(mc_etcd_t *e, int64_t ttl_s, int64_t *id_p,
                                int64_t *ttl_p);
/* *ttl_p: remaining TTL granted; 0 means the lease has expired. */
mc_status_t mc_etcd_lease_keepalive(mc_etcd_t *e, int64_t id, int64_t *ttl_p);
mc_status_t mc_etcd_lease_revoke(mc_etcd_t *e, int64_t id);

/* Drop the history before revision rev (operators and tests). */
mc_status_t mc_etcd_compact(mc_etcd_t *e, int64_t rev);

enum { MC_ETCD_PUT = 0, MC_ETCD_DELETE = 1, MC_ETCD_RESYNC = 2 };

/* Called on the watch thread, once per event, in revision order. RESYNC
 * (kv NULL): events were lost (the server cancelled the watch, e.g. the
 * revision to resume from was compacted away); the watch goes on from a
 * later revision and the callee must read the state it follows again.
 * Events read before such a re-read may be delivered again after it. */
typedef void (*mc_etcd_watch_cb)(void *arg, int type, const mc_etcd_kv_t *kv);

/* Watch the key (or prefix) from start_rev (0: from now). Returns once the
 * watch is established, or an error after the timeout. */
mc_status_t mc_etcd_watch(mc_etcd_t *e, const char *key, int prefix,
                          int64_t start_rev, mc_etcd_watch_cb cb, void *arg,
                          mc_etcd_watch_t **w_p);
/* Stop and join the watch thread (no callback runs after it returns). */
void mc_etcd_watch_stop(mc_etcd_watch_t *w);

#endif

/*
 * Membership signals from etcd. See etcd_member.h.
 */
#define _GNU_SOURCE
#include "etcd_member.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "etcd.h"
#include "mc_log.h"

struct mc_emember {
    mc_etcd_t *e;
    mc_etcd_t *ka_e;    /* the keepalive's own client: short timeouts, and
                           never behind a unary call stuck on a hung member */
    mc_etcd_t *rs_e;    /* the watch thread's re-reads (em_resync): 1 s per
                           endpoint, made at the first */
    char *endpoints;
    char *prefix;
    int rank, size, ttl_s;
    uint64_t inc;
    int64_t lease;
    char mykey[256];
    uint64_t *gone_inc; /* [size] atomic: incarnation + 1 whose key went */
    uint64_t *join_nonce; /* [size] atomic: registered joiner, 0: none */
    uint64_t *present_inc; /* [size] watch thread: incarnation + 1 of the
                              member key last seen there, 0: none */
    void (*on_join)(void *arg);
    void *on_join_arg;
    int joiner;         /* a joiner's registration: no watch */
    int lost;           /* atomic */
    mc_etcd_watch_t *w;
    pthread_t ka;
    int ka_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stop;
};

/* "<prefix>members/<slot>/<inc>" -> slot, inc; 0 if it is not one. */
static int parse_key(mc_emember_t *m, const char *key, int *slot, uint64_t *inc)
{
    size_t pl = strlen(m->prefix);
    if (strncmp(key, m->prefix, pl) != 0) return 0;
    const char *s = key + pl;
    if (strncmp(s, "members/", 8) != 0) return 0;
    char *end;
    long q = strtol(s + 8, &end, 10);
    if (*end != '/' || q < 0 || q >= m->size) return 0;
    unsigned long long v = strtoull(end + 1, &end, 10);
    if (*end != '\0') return 0;
    *slot = (int)q;
    *inc = v;
    return 1;
}

/* "<prefix>joins/<slot>/<nonce hex>" -> slot, nonce; 0 if it is not one. */
static int parse_join(mc_emember_t *m, const char *key, int *slot,
                      uint64_t *nonce)
{
    size_t pl = strlen(m->prefix);
    if (strncmp(key, m->prefix, pl) != 0) return 0;
    const char *s = key + pl;
    if (strncmp(s, "joins/", 6) != 0) return 0;
    char *end;
    long q = strtol(s + 6, &end, 10);
    if (*end != '/' || q < 0 || q >= m->size) return 0;
    unsigned long long v = strtoull(end + 1, &end, 16);
    if (*end != '\0' || v == 0) return 0;
    *slot = (int)q;
    *nonce = v;
    return 1;
}

static void on_join_event(mc_emember_t *m, int type, int q, uint64_t nonce)
{
    if (type == MC_ETCD_DELETE) {
        uint64_t cur = nonce;
        /* the joiner withdrew, was admitted, or its lease expired */
        __atomic_compare_exchange_n(&m->join_nonce[q], &cur, 0, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    } else {
        __atomic_store_n(&m->join_nonce[q], nonce, __ATOMIC_RELEASE);
        MC_LOG(MC_LOG_INFO,
               "rank %d: etcd: a joiner registered for slot %d (request "
               "%016" PRIx64 ")",
               m->rank, q, nonce);
    }
    void (*fn)(void *) = __atomic_load_n(&m->on_join, __ATOMIC_ACQUIRE);
    if (fn) fn(m->on_join_arg);
}

static void em_resync(mc_emember_t *m);

static void on_event(void *arg, int type, const mc_etcd_kv_t *kv)
{
    mc_emember_t *m = arg;
    if (type == MC_ETCD_RESYNC) {
        em_resync(m);
        return;
    }
    int q;
    uint64_t inc;
    if (parse_join(m, kv->key, &q, &inc)) {
        on_join_event(m, type, q, inc);
        return;
    }
    if (!parse_key(m, kv->key, &q, &inc)) return;
    if (type == MC_ETCD_DELETE) {
        if (m->present_inc[q] == inc + 1) m->present_inc[q] = 0;
        if (q == m->rank && inc == m->inc) {
            if (!__atomic_exchange_n(&m->lost, 1, __ATOMIC_ACQ_REL))
                MC_LOG(MC_LOG_ERROR,
                       "rank %d: its etcd member key was deleted (lease "
                       "expired or revoked): fenced",
                       m->rank);
            return;
        }
        __atomic_store_n(&m->gone_inc[q], inc + 1, __ATOMIC_RELEASE);
        MC_LOG(MC_LOG_WARN,
               "rank %d: etcd: the member key of rank %d (incarnation "
               "%" PRIu64 ") is gone: its lease expired",
               m->rank, q, inc);
    } else {
        uint64_t g = inc + 1;
        if (m->present_inc[q] < inc + 1) m->present_inc[q] = inc + 1;
        __atomic_compare_exchange_n(&m->gone_inc[q], &g, 0, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
}

/* Read the member keys into present_inc (the watch thread, or em_run
 * before the watch starts). Returns the keys read (caller frees) or an
 * error. */
static mc_status_t em_read(mc_emember_t *m, const char *part,
                           mc_etcd_kv_t **kvs_p, int *n_p)
{
    char key[300];
    snprintf(key, sizeof(key), "%s%s", m->prefix, part);
    mc_status_t st = MC_ERR_IO;
    /* three tries, each bounded by the client's timeout per endpoint; one
     * stopping (mc_emember_stop, which joins this thread) ends them */
    for (int tries = 0; tries < 3; tries++) {
        pthread_mutex_lock(&m->lock);
        int stop = m->stop;
        pthread_mutex_unlock(&m->lock);
        if (stop) break;
        /* its own client: m->e may still start on the member whose
         * stream the watch just left (5 s per call there) */
        if (!m->rs_e) {
            st = mc_etcd_open(m->endpoints, 1000, &m->rs_e);
            if (st != MC_OK) return st;
        }
        st = mc_etcd_get(m->rs_e, key, 1, kvs_p, n_p, NULL);
        if (st == MC_OK) break;
        usleep(100000);
    }
    return st;
}

/* The watch lost events (it was cancelled, e.g. compacted past the
 * revision it resumed from): read the member and join keys again. A member
 * key seen before and missing now went while nobody watched: its rank is
 * gone (our own: fenced); joins are what the store holds now. */
static void em_resync(mc_emember_t *m)
{
    mc_etcd_kv_t *kvs = NULL;
    int n = 0;
    mc_status_t st = em_read(m, "members/", &kvs, &n);
    if (st != MC_OK) {
        MC_LOG(MC_LOG_ERROR,
               "rank %d: etcd: cannot read the member keys again after the "
               "watch lost events (%s): a rank whose lease expired meanwhile "
               "is found by its heartbeat only",
               m->rank, mc_last_error());
        return;
    }
    for (int q = 0; q < m->size; q++) {
        uint64_t was = m->present_inc[q], top = 0;
        int still = 0;
        for (int i = 0; i < n; i++) {
            int p;
            uint64_t inc;
            if (!parse_key(m, kvs[i].key, &p, &inc) || p != q) continue;
            still |= inc + 1 == was;
            if (inc + 1 > top) top = inc + 1;
        }
        if (was && !still) {
            char key[300];
            snprintf(key, sizeof(key), "%smembers/%d/%" PRIu64, m->prefix, q,
                     was - 1);
            mc_etcd_kv_t gone = {.key = key};
            on_event(m, MC_ETCD_DELETE, &gone);
        }
        if (top) {
            char key[300];
            snprintf(key, sizeof(key), "%smembers/%d/%" PRIu64, m->prefix, q,
                     top - 1);
            mc_etcd_kv_t put = {.key = key};
            on_event(m, MC_ETCD_PUT, &put);
        }
    }
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    if (m->joiner) return;
    st = em_read(m, "joins/", &kvs, &n);
    if (st != MC_OK) {
        MC_LOG(MC_LOG_ERROR,
               "rank %d: etcd: cannot read the join requests again after the "
               "watch lost events (%s)",
               m->rank, mc_last_error());
        return;
    }
    for (int q = 0; q < m->size; q++) {
        uint64_t nonce = 0;
        for (int i = 0; i < n; i++) {
            int p;
            uint64_t v;
            if (parse_join(m, kvs[i].key, &p, &v) && p == q) nonce = v;
        }
        uint64_t cur = __atomic_load_n(&m->join_nonce[q], __ATOMIC_ACQUIRE);
        if (cur != nonce) __atomic_store_n(&m->join_nonce[q], nonce,
                                           __ATOMIC_RELEASE);
    }
    mc_etcd_kvs_free(kvs, n);
    free(kvs);
    void (*fn)(void *) = __atomic_load_n(&m->on_join, __ATOMIC_ACQUIRE);
    if (fn) fn(m->on_join_arg);
}

/* Every TTL/3 (a failed one again after at most 250 ms), on its own client
 * whose calls give each endpoint TTL/4: a hung member costs a quarter of
 * the lease before the next endpoint is asked, so one dead or stopped
 * etcd member never lets a healthy rank's lease run out. The clock is
 * monotonic: a wall-clock step does not delay it. */
static void *ka_main(void *arg)
{
    mc_emember_t *m = arg;
    int64_t period_ms = m->ttl_s * 1000 / 3;
    if (period_ms < 100) period_ms = 100;
    int64_t wait_ms = period_ms;
    int outage = 0;
    pthread_mutex_lock(&m->lock);
    while (!m->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t ns = ts.tv_nsec + wait_ms * 1000000;
        ts.tv_sec += ns / 1000000000;
        ts.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&m->cond, &m->lock, &ts);
        if (m->stop) break;
        pthread_mutex_unlock(&m->lock);
        int64_t ttl = -1;
        mc_status_t st = mc_etcd_lease_keepalive(m->ka_e, m->lease, &ttl);
        wait_ms = period_ms;
        if (st != MC_OK) {
            if (!outage)
                MC_LOG(MC_LOG_WARN,
                       "rank %d: etcd keepalive failed (%s); the group keeps "
                       "its view, membership changes wait for etcd",
                       m->rank, mc_last_error());
            outage = 1;
            if (wait_ms > 250) wait_ms = 250;
        } else if (ttl <= 0) {
            if (!__atomic_exchange_n(&m->lost, 1, __ATOMIC_ACQ_REL))
                MC_LOG(MC_LOG_ERROR,
                       "rank %d: its etcd lease %" PRId64 " has expired: "
                       "fenced (it must rejoin as a new process)",
                       m->rank, m->lease);
            pthread_mutex_lock(&m->lock);
            break;
        } else if (outage) {
            MC_LOG(MC_LOG_WARN, "rank %d: etcd reachable again", m->rank);
            outage = 0;
        }
        pthread_mutex_lock(&m->lock);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

static mc_emember_t *em_new(const char *prefix, int rank, int size,
                            uint64_t inc, int ttl_s)
{
    mc_emember_t *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    m->prefix = strdup(prefix);
    m->gone_inc = calloc((size_t)size, sizeof(uint64_t));
    m->join_nonce = calloc((size_t)size, sizeof(uint64_t));
    m->present_inc = calloc((size_t)size, sizeof(uint64_t));
    m->rank = rank;
    m->size = size;
    m->inc = inc;
    m->ttl_s = ttl_s > 0 ? ttl_s : 2;
    pthread_mutex_init(&m->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->cond, &ca);
    pthread_condattr_destroy(&ca);
    return m;
}

/* Lease and its keepalive thread, the leased key m->mykey, the watch from
 * our put on (unless a joiner's registration). */
static mc_status_t em_run(mc_emember_t *m, const char *endpoints,
                          int64_t timeout_ms)
{
    mc_status_t st = MC_ERR_NO_MEMORY;
    if (!m->prefix || !m->gone_inc || !m->join_nonce || !m->present_inc)
        return mc_err(st, "etcd membership: out of memory");
    m->endpoints = strdup(endpoints);
    if (!m->endpoints) return mc_err(st, "etcd membership: out of memory");
    st = mc_etcd_open(endpoints, timeout_ms, &m->e);
    if (st != MC_OK) return st;
    int64_t ka_ms = m->ttl_s * 1000 / 4;
    st = mc_etcd_open(endpoints, ka_ms > 100 ? ka_ms : 100, &m->ka_e);
    if (st != MC_OK) return st;
    st = mc_etcd_lease_grant(m->e, m->ttl_s, &m->lease, NULL);
    if (st != MC_OK) return st;
    /* kept alive from now on, whatever the calls below take */
    if (pthread_create(&m->ka, NULL, ka_main, m) != 0)
        return mc_err(MC_ERR_NO_MEMORY, "etcd membership: no keepalive thread");
    m->ka_started = 1;
    char val[64];
    int vl = snprintf(val, sizeof(val), "pid %d", (int)getpid());
    int64_t rev = 0;
    st = mc_etcd_put(m->e, m->mykey, val, (size_t)vl, m->lease, &rev);
    if (st != MC_OK) return st;
    if (!m->joiner) {
        /* watch first, from the revision of our own put on: no event
         * between is missed; joins registered earlier are read once, and
         * the member keys there now (a lost watch compares against them) */
        char jkey[256];
        snprintf(jkey, sizeof(jkey), "%sjoins/", m->prefix);
        mc_etcd_kv_t *kvs = NULL;
        int n = 0;
        st = mc_etcd_get(m->e, jkey, 1, &kvs, &n, NULL);
        if (st != MC_OK) return st;
        for (int i = 0; i < n; i++) {
            int q;
            uint64_t nonce;
            if (parse_join(m, kvs[i].key, &q, &nonce))
                __atomic_store_n(&m->join_nonce[q], nonce, __ATOMIC_RELEASE);
        }
        mc_etcd_kvs_free(kvs, n);
        free(kvs);
        snprintf(jkey, sizeof(jkey), "%smembers/", m->prefix);
        st = mc_etcd_get(m->e, jkey, 1, &kvs, &n, NULL);
        if (st != MC_OK) return st;
        for (int i = 0; i < n; i++) {
            int q;
            uint64_t inc;
            if (parse_key(m, kvs[i].key, &q, &inc) &&
                m->present_inc[q] < inc + 1)
                m->present_inc[q] = inc + 1;
        }
        mc_etcd_kvs_free(kvs, n);
        free(kvs);
        st = mc_etcd_watch(m->e, m->prefix, 1, rev, on_event, m, &m->w);
        if (st != MC_OK) return st;
    }
    return MC_OK;
}

mc_status_t mc_emember_start(const char *endpoints, const char *prefix,
                             int rank, int size, uint64_t inc, int ttl_s,
                             int64_t timeout_ms, mc_emember_t **m_p)
{
    mc_emember_t *m = em_new(prefix, rank, size, inc, ttl_s);
    if (!m) return mc_err(MC_ERR_NO_MEMORY, "etcd membership: out of memory");
    snprintf(m->mykey, sizeof(m->mykey), "%smembers/%d/%" PRIu64, m->prefix,
             rank, inc);
    mc_status_t st = em_run(m, endpoints, timeout_ms);
    if (st != MC_OK) {
        mc_emember_stop(m);
        return st;
    }
    *m_p = m;
    return MC_OK;
}

mc_status_t mc_emember_join_register(const char *endpoints,
                                     const char *prefix, int slot, int size,
                                     uint64_t nonce, int ttl_s,
                                     int64_t timeout_ms, mc_emember_t **m_p)
{
    mc_emember_t *m = em_new(prefix, slot, size, 0, ttl_s);
    if (!m) return mc_err(MC_ERR_NO_MEMORY, "etcd join: out of memory");
    m->joiner = 1;
    snprintf(m->mykey, sizeof(m->mykey), "%sjoins/%d/%016" PRIx64, m->prefix,
             slot, nonce);
    mc_status_t st = em_run(m, endpoints, timeout_ms);
    if (st != MC_OK) {
        mc_emember_stop(m);
        return st;
    }
    *m_p = m;
    return MC_OK;
}

void mc_emember_on_join(mc_emember_t *m, void (*fn)(void *arg), void *arg)
{
    m->on_join_arg = arg;
    __atomic_store_n(&m->on_join, fn, __ATOMIC_RELEASE);
}

int mc_emember_joins(mc_emember_t *m, uint64_t *nonce)
{
    int n = 0;
    for (int q = 0; q < m->size; q++) {
        nonce[q] = __atomic_load_n(&m->join_nonce[q], __ATOMIC_ACQUIRE);
        n += nonce[q] != 0;
    }
    return n;
}

static char *view_enc(const mc_emember_t *m, uint64_t epoch, uint64_t start,
                      const uint8_t *active, size_t *len_p)
{
    char *v = malloc((size_t)m->size + 48);
    if (!v) return NULL;
    int n = snprintf(v, 48, "%" PRIu64 " %" PRIu64 " ", epoch, start);
    for (int p = 0; p < m->size; p++)
        v[n + p] = active[p] ? '1' : '0';
    v[n + m->size] = '\0';
    *len_p = (size_t)n + (size_t)m->size;
    return v;
}

static int view_dec(const mc_emember_t *m, const char *v, uint64_t *epoch,
                    uint64_t *start, uint8_t *active)
{
    char *end;
    *epoch = strtoull(v, &end, 10);
    if (*end != ' ') return 0;
    *start = strtoull(end + 1, &end, 10);
    if (*end != ' ' || strlen(end + 1) != (size_t)m->size) return 0;
    for (int p = 0; p < m->size; p++)
        active[p] = end[1 + p] == '1';
    return 1;
}

mc_status_t mc_emember_view_init(mc_emember_t *m, uint64_t epoch,
                                 uint64_t start, const uint8_t *active)
{
    size_t len;
    char key[300], *v = view_enc(m, epoch, start, active, &len);
    if (!v) return mc_err(MC_ERR_NO_MEMORY, "etcd view: out of memory");
    snprintf(key, sizeof(key), "%sview", m->prefix);
    int ok = 0;
    mc_status_t st =
        mc_etcd_cas_val(m->e, key, NULL, 0, v, len, 0, &ok, NULL, NULL);
    free(v);
    return st;
}

mc_status_t mc_emember_view_commit(mc_emember_t *m, uint64_t epoch,
                                   uint64_t start, const uint8_t *active,
                                   uint64_t nepoch, uint64_t nstart,
                                   const uint8_t *nactive, int *ok,
                                   uint64_t *cur_epoch, uint64_t *cur_start,
                                   uint8_t *cur_active)
{
    size_t ol, nl;
    char key[300];
    char *o = view_enc(m, epoch, start, active, &ol);
    char *nv = view_enc(m, nepoch, nstart, nactive, &nl);
    mc_status_t st = MC_ERR_NO_MEMORY;
    *ok = 0;
    if (o && nv) {
        snprintf(key, sizeof(key), "%sview", m->prefix);
        mc_etcd_kv_t cur;
        st = mc_etcd_cas_val(m->e, key, o, ol, nv, nl, 0, ok, NULL, &cur);
        if (st == MC_OK && !*ok) {
            if (!cur.key ||
                !view_dec(m, cur.val, cur_epoch, cur_start, cur_active))
                st = mc_err(MC_ERR_PROTOCOL,
                            "etcd view %s: %s", key,
                            cur.key ? "malformed value" : "missing");
            mc_etcd_kvs_free(&cur, 1);
        }
    } else {
        mc_err(st, "etcd view: out of memory");
    }
    free(o);
    free(nv);
    return st;
}

int mc_emember_gone(mc_emember_t *m, const uint64_t *inc, uint8_t *gone)
{
    int n = 0;
    for (int q = 0; q < m->size; q++) {
        uint64_t g = __atomic_load_n(&m->gone_inc[q], __ATOMIC_ACQUIRE);
        gone[q] = q != m->rank && g && g == inc[q] + 1;
        n += gone[q];
    }
    return n;
}

int mc_emember_lost(mc_emember_t *m)
{
    return __atomic_load_n(&m->lost, __ATOMIC_ACQUIRE);
}

void mc_emember_stop(mc_emember_t *m)
{
    if (!m) return;
    if (m->ka_started) {
        pthread_mutex_lock(&m->lock);
        m->stop = 1;
        pthread_cond_signal(&m->cond);
        pthread_mutex_unlock(&m->lock);
        pthread_join(m->ka, NULL);
    }
    if (m->w) mc_etcd_watch_stop(m->w);
    if (m->e && m->lease && !mc_emember_lost(m))
        mc_etcd_lease_revoke(m->e, m->lease); /* best effort */
    mc_etcd_close(m->e);
    mc_etcd_close(m->ka_e);
    mc_etcd_close(m->rs_e);
    free(m->endpoints);
    pthread_mutex_destroy(&m->lock);
    pthread_cond_destroy(&m->cond);
    free(m->gone_inc);
    free(m->join_nonce);
    free(m->present_inc);
    free(m->prefix);
    free(m);
}

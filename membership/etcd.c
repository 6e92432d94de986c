/*
 * etcd v3 client over libcurl and the JSON gateway. See etcd.h.
 */
#define _GNU_SOURCE
#include "etcd.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mc_log.h"

#define MC_ETCD_MAX_EP 16

struct mc_etcd {
    char *ep[MC_ETCD_MAX_EP];
    int nep;
    int cur; /* endpoint that answered last (lock) */
    int64_t timeout_ms;
    pthread_mutex_t lock;
    CURL *h;
};

/* ------------------------------------------------------------------------ */
/* base64 and JSON helpers                                                  */
/* ------------------------------------------------------------------------ */

static const char b64c[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_enc(const void *src, size_t n)
{
    const uint8_t *s = src;
    char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
    if (!out) return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        *o++ = b64c[v >> 18];
        *o++ = b64c[(v >> 12) & 63];
        *o++ = b64c[(v >> 6) & 63];
        *o++ = b64c[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);
        *o++ = b64c[v >> 18];
        *o++ = b64c[(v >> 12) & 63];
        *o++ = i + 1 < n ? b64c[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

static int b64_val(int ch)
{
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+' || ch == '-') return 62;
    if (ch == '/' || ch == '_') return 63;
    return -1;
}

/* Decoded bytes plus a NUL; NULL on bad input or no memory. */
static void *b64_dec(const char *s, size_t *n_p)
{
    size_t len = strlen(s);
    uint8_t *out = malloc(len / 4 * 3 + 4), *o = out;
    if (!out) return NULL;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '=') break;
        int v = b64_val((unsigned char)s[i]);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (uint8_t)(acc >> bits);
        }
    }
    *o = 0;
    *n_p = (size_t)(o - out);
    return out;
}

/* int64 fields come as strings (or numbers from older gateways). */
static int64_t j_i64(const cJSON *o, const char *name)
{
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, name) : NULL;
    if (cJSON_IsString(v) && v->valuestring)
        return strtoll(v->valuestring, NULL, 10);
    if (cJSON_IsNumber(v)) return (int64_t)v->valuedouble;
    return 0;
}

static void j_add_i64(cJSON *o, const char *name, int64_t v)
{
    char t[32];
    snprintf(t, sizeof(t), "%" PRId64, v);
    cJSON_AddStringToObject(o, name, t);
}

/* Adds base64(bytes) as `name`; 0 on no memory. */
static int j_add_b64(cJSON *o, const char *name, const void *p, size_t n)
{
    char *b = b64_enc(p, n);
    if (!b) return 0;
    cJSON *r = cJSON_AddStringToObject(o, name, b);
    free(b);
    return r != NULL;
}

/* The end of the range of keys starting with `prefix`: prefix with its last
 * byte + 1 (bytes 0xff dropped); "\0" (all keys) for an empty prefix. */
static int j_add_prefix_end(cJSON *o, const char *prefix)
{
    size_t n = strlen(prefix);
    char *end = malloc(n + 1);
    if (!end) return 0;
    memcpy(end, prefix, n + 1);
    while (n > 0 && (unsigned char)end[n - 1] == 0xff)
        n--;
    int ok;
    if (n == 0) {
        uint8_t z = 0;
        ok = j_add_b64(o, "range_end", &z, 1);
    } else {
        end[n - 1] = (char)((unsigned char)end[n - 1] + 1);
        ok = j_add_b64(o, "range_end", end, n);
    }
    free(end);
    return ok;
}

static mc_status_t kv_from_json(const cJSON *j, mc_etcd_kv_t *kv)
{
    memset(kv, 0, sizeof(*kv));
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(j, "key");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "value");
    size_t kl = 0;
    kv->key = b64_dec(cJSON_IsString(k) ? k->valuestring : "", &kl);
    kv->val = b64_dec(cJSON_IsString(v) ? v->valuestring : "", &kv->vlen);
    if (!kv->key || !kv->val) {
        free(kv->key);
        free(kv->val);
        memset(kv, 0, sizeof(*kv));
        return mc_err(MC_ERR_PROTOCOL, "etcd: bad base64 in a key-value");
    }
    kv->create_rev = j_i64(j, "create_revision");
    kv->mod_rev = j_i64(j, "mod_revision");
    kv->version = j_i64(j, "version");
    kv->lease = j_i64(j, "lease");
    return MC_OK;
}

void mc_etcd_kvs_free(mc_etcd_kv_t *kvs, int n)
{
    if (!kvs) return;
    for (int i = 0; i < n; i++) {
        free(kvs[i].key);
        free(kvs[i].val);
    }
}

/* ------------------------------------------------------------------------ */
/* Unary calls                                                              */
/* ------------------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
    int over;
} rbuf_t;

static size_t rbuf_write(char *data, size_t sz, size_t nm, void *arg)
{
    rbuf_t *b = arg;
    size_t n = sz * nm;
    if (b->n + n + 1 > MC_ETCD_MAX_RESP) {
        b->over = 1;
        return 0; /* aborts the transfer */
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
    b->p[b->n] = '\0';
    return n;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

mc_status_t mc_etcd_open(const char *endpoints, int64_t timeout_ms,
                         mc_etcd_t **e_p)
{
    if (!endpoints || !e_p)
        return mc_err(MC_ERR_INVALID_ARG, "etcd: endpoints and e_p needed");
    pthread_once(&curl_once, curl_init_once);
    mc_etcd_t *e = calloc(1, sizeof(*e));
    if (!e) return mc_err(MC_ERR_NO_MEMORY, "etcd: out of memory");
    e->timeout_ms = timeout_ms > 0 ? timeout_ms : 5000;
    const char *s = endpoints;
    while (*s) {
        size_t n = strcspn(s, ", ");
        if (n) {
            if (e->nep == MC_ETCD_MAX_EP) {
                mc_etcd_close(e);
                return mc_err(MC_ERR_INVALID_ARG,
                              "etcd: more than %d endpoints in '%s'",
                              MC_ETCD_MAX_EP, endpoints);
            }
            int scheme = n > 7 && (strncmp(s, "http://", 7) == 0 ||
                                   strncmp(s, "https://", 8) == 0);
            char *u = malloc(n + 8);
            if (!u) {
                mc_etcd_close(e);
                return mc_err(MC_ERR_NO_MEMORY, "etcd: out of memory");
            }
            snprintf(u, n + 8, "%s%.*s", scheme ? "" : "http://", (int)n, s);
            while (strlen(u) > 0 && u[strlen(u) - 1] == '/')
                u[strlen(u) - 1] = '\0';
            e->ep[e->nep++] = u;
        }
        s += n;
        while (*s == ',' || *s == ' ')
            s++;
    }
    if (e->nep == 0) {
        mc_etcd_close(e);
        return mc_err(MC_ERR_INVALID_ARG, "etcd: no endpoint in '%s'",
                      endpoints);
    }
    pthread_mutex_init(&e->lock, NULL);
    e->h = curl_easy_init();
    if (!e->h) {
        mc_etcd_close(e);
        return mc_err(MC_ERR_NO_MEMORY, "etcd: curl_easy_init failed");
    }
    *e_p = e;
    return MC_OK;
}

void mc_etcd_close(mc_etcd_t *e)
{
    if (!e) return;
    if (e->h) {
        curl_easy_cleanup(e->h);
        pthread_mutex_destroy(&e->lock);
    }
    for (int i = 0; i < e->nep; i++)
        free(e->ep[i]);
    free(e);
}

/* Errors the next endpoint may not have. */
static int try_next(CURLcode rc)
{
    return rc == CURLE_COULDNT_CONNECT || rc == CURLE_OPERATION_TIMEDOUT ||
           rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR ||
           rc == CURLE_GOT_NOTHING || rc == CURLE_COULDNT_RESOLVE_HOST;
}

/* Errors after which the request may have been applied (it was sent, the
 * answer did not come), if any of it was uploaded. */
static int maybe_applied(CURLcode rc)
{
    return rc == CURLE_OPERATION_TIMEDOUT || rc == CURLE_RECV_ERROR ||
           rc == CURLE_SEND_ERROR || rc == CURLE_GOT_NOTHING;
}

/* POST `req` to `path` and parse the answer into *resp_p (freed by the
 * caller). Takes ownership of req. once: the request must not be applied
 * twice (a transaction): after an error that may follow its application
 * the call fails instead of asking the next endpoint, which the next call
 * starts with; the caller reads the outcome back. */
static mc_status_t call_ex(mc_etcd_t *e, const char *path, cJSON *req,
                           cJSON **resp_p, int once)
{
    *resp_p = NULL;
    char *body = req ? cJSON_PrintUnformatted(req) : NULL;
    cJSON_Delete(req);
    if (!body) return mc_err(MC_ERR_NO_MEMORY, "etcd %s: out of memory", path);
    pthread_mutex_lock(&e->lock);
    mc_status_t st = MC_ERR_IO;
    char why[1024] = "";
    long code = 0;
    rbuf_t b = {0};
    int first = e->cur;
    for (int k = 0; k < e->nep; k++) {
        int i = (first + k) % e->nep;
        char url[600];
        snprintf(url, sizeof(url), "%s%s", e->ep[i], path);
        b.n = 0;
        b.over = 0;
        if (b.p) b.p[0] = '\0';
        CURL *h = e->h;
        curl_easy_reset(h);
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, rbuf_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)e->timeout_ms);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)(e->timeout_ms < 1000 ? e->timeout_ms : 1000));
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
        CURLcode rc = curl_easy_perform(h);
        if (rc != CURLE_OK) {
            snprintf(why, sizeof(why), "%s: %s%s", url,
                     curl_easy_strerror(rc),
                     b.over ? " (response over the size limit)" : "");
            st = rc == CURLE_OPERATION_TIMEDOUT ? MC_ERR_TIMEOUT : MC_ERR_IO;
            if (b.over) break;
            curl_off_t up = 0;
            curl_easy_getinfo(h, CURLINFO_SIZE_UPLOAD_T, &up);
            /* a connect that timed out sent nothing: the next may */
            if (once && maybe_applied(rc) && up > 0) {
                e->cur = (i + 1) % e->nep;
                snprintf(why + strlen(why), sizeof(why) - strlen(why),
                         " (a transaction: not sent again)");
                break;
            }
            if (try_next(rc)) continue;
            break;
        }
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        e->cur = i;
        cJSON *j = b.n ? cJSON_ParseWithLength(b.p, b.n) : NULL;
        if (code != 200) {
            const cJSON *m = j ? cJSON_GetObjectItemCaseSensitive(j, "message")
                               : NULL;
            if (!m && j) m = cJSON_GetObjectItemCaseSensitive(j, "error");
            snprintf(why, sizeof(why), "%s: HTTP %ld: %.300s", url, code,
                     cJSON_IsString(m) ? m->valuestring
                                       : (b.p ? b.p : "(no body)"));
            cJSON_Delete(j);
            /* 503: that member has no leader (or is stopping): try another */
            st = MC_ERR_IO;
            if (code == 503) continue;
            break;
        }
        if (!j) {
            snprintf(why, sizeof(why), "%s: unparsable response (%zu bytes)",
                     url, b.n);
            st = MC_ERR_PROTOCOL;
            break;
        }
        *resp_p = j;
        st = MC_OK;
        break;
    }
    pthread_mutex_unlock(&e->lock);
    free(b.p);
    free(body);
    if (st != MC_OK) return mc_err(st, "etcd %s: %.900s", path, why);
    return MC_OK;
}

static mc_status_t call(mc_etcd_t *e, const char *path, cJSON *req,
                        cJSON **resp_p)
{
    return call_ex(e, path, req, resp_p, 0);
}

static mc_status_t no_mem(cJSON *j, const char *what)
{
    cJSON_Delete(j);
    return mc_err(MC_ERR_NO_MEMORY, "etcd %s: out of memory", what);
}

static int64_t header_rev(const cJSON *r)
{
    return j_i64(cJSON_GetObjectItemCaseSensitive(r, "header"), "revision");
}

mc_status_t mc_etcd_put(mc_etcd_t *e, const char *key, const void *val,
                        size_t len, int64_t lease, int64_t *rev_p)
{
    cJSON *q = cJSON_CreateObject();
    if (!q || !j_add_b64(q, "key", key, strlen(key)) ||
        !j_add_b64(q, "value", val, len))
        return no_mem(q, "put");
    if (lease) j_add_i64(q, "lease", lease);
    cJSON *r;
    MC_CHECK(call(e, "/v3/kv/put", q, &r));
    if (rev_p) *rev_p = header_rev(r);
    cJSON_Delete(r);
    return MC_OK;
}

static mc_status_t kvs_from(const cJSON *arr, mc_etcd_kv_t **kvs_p, int *n_p)
{
    *kvs_p = NULL;
    *n_p = 0;
    int n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : 0;
    if (!n) return MC_OK;
    mc_etcd_kv_t *kvs = calloc((size_t)n, sizeof(*kvs));
    if (!kvs) return mc_err(MC_ERR_NO_MEMORY, "etcd: out of memory");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        mc_status_t st = kv_from_json(it, &kvs[i]);
        if (st != MC_OK) {
            mc_etcd_kvs_free(kvs, i);
            free(kvs);
            return st;
        }
        i++;
    }
    *kvs_p = kvs;
    *n_p = i;
    return MC_OK;
}

mc_status_t mc_etcd_get(mc_etcd_t *e, const char *key, int prefix,
                        mc_etcd_kv_t **kvs_p, int *n_p, int64_t *rev_p)
{
    *kvs_p = NULL;
    *n_p = 0;
    cJSON *q = cJSON_CreateObject();
    if (!q || !j_add_b64(q, "key", key, strlen(key)) ||
        (prefix && !j_add_prefix_end(q, key)))
        return no_mem(q, "range");
    cJSON *r;
    MC_CHECK(call(e, "/v3/kv/range", q, &r));
    if (rev_p) *rev_p = header_rev(r);
    mc_status_t st =
        kvs_from(cJSON_GetObjectItemCaseSensitive(r, "kvs"), kvs_p, n_p);
    cJSON_Delete(r);
    return st;
}

mc_status_t mc_etcd_del(mc_etcd_t *e, const char *key, int prefix,
                        int64_t *ndel_p)
{
    cJSON *q = cJSON_CreateObject();
    if (!q || !j_add_b64(q, "key", key, strlen(key)) ||
        (prefix && !j_add_prefix_end(q, key)))
        return no_mem(q, "deleterange");
    cJSON *r;
    MC_CHECK(call(e, "/v3/kv/deleterange", q, &r));
    if (ndel_p) *ndel_p = j_i64(r, "deleted");
    cJSON_Delete(r);
    return MC_OK;
}

/* One-key transaction: `cmp` is the compare object (owned), success puts,
 * failure reads the key. */
static mc_status_t txn1(mc_etcd_t *e, const char *key, cJSON *cmp,
                        const void *val, size_t len, int64_t lease, int *ok_p,
                        int64_t *rev_p, mc_etcd_kv_t *cur_p)
{
    *ok_p = 0;
    if (cur_p) memset(cur_p, 0, sizeof(*cur_p));
    cJSON *q = cJSON_CreateObject();
    cJSON *ca = cJSON_AddArrayToObject(q, "compare");
    cJSON *sa = cJSON_AddArrayToObject(q, "success");
    cJSON *fa = cJSON_AddArrayToObject(q, "failure");
    if (!q || !ca || !sa || !fa || !cmp) {
        cJSON_Delete(cmp);
        return no_mem(q, "txn");
    }
    cJSON_AddItemToArray(ca, cmp);
    if (!j_add_b64(cmp, "key", key, strlen(key))) return no_mem(q, "txn");
    cJSON *s = cJSON_CreateObject(), *put = cJSON_AddObjectToObject(s, "request_put");
    cJSON_AddItemToArray(sa, s);
    if (!put || !j_add_b64(put, "key", key, strlen(key)) ||
        !j_add_b64(put, "value", val, len))
        return no_mem(q, "txn");
    if (lease) j_add_i64(put, "lease", lease);
    cJSON *f = cJSON_CreateObject(), *rg = cJSON_AddObjectToObject(f, "request_range");
    cJSON_AddItemToArray(fa, f);
    if (!rg || !j_add_b64(rg, "key", key, strlen(key)))
        return no_mem(q, "txn");
    cJSON *r;
    MC_CHECK(call_ex(e, "/v3/kv/txn", q, &r, 1));
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(r, "succeeded");
    *ok_p = cJSON_IsTrue(sc);
    if (rev_p) *rev_p = header_rev(r);
    mc_status_t st = MC_OK;
    if (!*ok_p && cur_p) {
        const cJSON *rs = cJSON_GetObjectItemCaseSensitive(r, "responses");
        const cJSON *r0 = cJSON_IsArray(rs) ? cJSON_GetArrayItem(rs, 0) : NULL;
        const cJSON *rr =
            r0 ? cJSON_GetObjectItemCaseSensitive(r0, "response_range") : NULL;
        const cJSON *kvs = rr ? cJSON_GetObjectItemCaseSensitive(rr, "kvs") : NULL;
        const cJSON *k0 = cJSON_IsArray(kvs) ? cJSON_GetArrayItem(kvs, 0) : NULL;
        if (k0) st = kv_from_json(k0, cur_p);
    }
    cJSON_Delete(r);
    return st;
}

mc_status_t mc_etcd_cas_rev(mc_etcd_t *e, const char *key, int64_t mod_rev,
                            const void *val, size_t len, int64_t lease,
                            int *ok_p, int64_t *rev_p, mc_etcd_kv_t *cur_p)
{
    cJSON *c = cJSON_CreateObject();
    if (c) {
        cJSON_AddStringToObject(c, "result", "EQUAL");
        if (mod_rev) {
            cJSON_AddStringToObject(c, "target", "MOD");
            j_add_i64(c, "mod_revision", mod_rev);
        } else {
            cJSON_AddStringToObject(c, "target", "CREATE");
            j_add_i64(c, "create_revision", 0);
        }
    }
    return txn1(e, key, c, val, len, lease, ok_p, rev_p, cur_p);
}

mc_status_t mc_etcd_cas_val(mc_etcd_t *e, const char *key, const void *expect,
                            size_t elen, const void *val, size_t len,
                            int64_t lease, int *ok_p, int64_t *rev_p,
                            mc_etcd_kv_t *cur_p)
{
    cJSON *c = cJSON_CreateObject();
    if (c) {
        cJSON_AddStringToObject(c, "result", "EQUAL");
        if (expect) {
            cJSON_AddStringToObject(c, "target", "VALUE");
            if (!j_add_b64(c, "value", expect, elen)) {
                cJSON_Delete(c);
                c = NULL;
            }
        } else {
            cJSON_AddStringToObject(c, "target", "CREATE");
            j_add_i64(c, "create_revision", 0);
        }
    }
    return txn1(e, key, c, val, len, lease, ok_p, rev_p, cur_p);
}

mc_status_t mc_etcd_lease_grant(mc_etcd_t *e, int64_t ttl_s, int64_t *id_p,
                                int64_t *ttl_p)
{
    cJSON *q = cJSON_CreateObject();
    if (!q) return no_mem(q, "lease grant");
    j_add_i64(q, "TTL", ttl_s);
    cJSON *r;
    MC_CHECK(call(e, "/v3/lease/grant", q, &r));
    *id_p = j_i64(r, "ID");
    if (ttl_p) *ttl_p = j_i64(r, "TTL");
    const cJSON *er = cJSON_GetObjectItemCaseSensitive(r, "error");
    mc_status_t st = MC_OK;
    if (!*id_p)
        st = mc_err(MC_ERR_PROTOCOL, "etcd lease grant: no lease ID (%s)",
                    cJSON_IsString(er) ? er->valuestring : "no error text");
    cJSON_Delete(r);
    return st;
}

mc_status_t mc_etcd_lease_keepalive(mc_etcd_t *e, int64_t id, int64_t *ttl_p)
{
    cJSON *q = cJSON_CreateObject();
    if (!q) return no_mem(q, "lease keepalive");
    j_add_i64(q, "ID", id);
    cJSON *r;
    MC_CHECK(call(e, "/v3/lease/keepalive", q, &r));
    /* a stream endpoint: {"result": {...}} (one message) */
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(r, "result");
    *ttl_p = j_i64(res ? res : r, "TTL");
    cJSON_Delete(r);
    return MC_OK;
}

mc_status_t mc_etcd_compact(mc_etcd_t *e, int64_t rev)
{
    cJSON *q = cJSON_CreateObject();
    if (!q) return no_mem(q, "compaction");
    j_add_i64(q, "revision", rev);
    cJSON *r;
    MC_CHECK(call(e, "/v3/kv/compaction", q, &r));
    cJSON_Delete(r);
    return MC_OK;
}

mc_status_t mc_etcd_lease_revoke(mc_etcd_t *e, int64_t id)
{
    cJSON *q = cJSON_CreateObject();
    if (!q) return no_mem(q, "lease revoke");
    j_add_i64(q, "ID", id);
    cJSON *r;
    MC_CHECK(call(e, "/v3/lease/revoke", q, &r));
    cJSON_Delete(r);
    return MC_OK;
}

/* ------------------------------------------------------------------------ */
/* Watches                                                                  */
/* ------------------------------------------------------------------------ */

struct mc_etcd_watch {
    mc_etcd_t *e;
    char *key;
    int prefix;
    mc_etcd_watch_cb cb;
    void *arg;
    pthread_t th;
    CURLM *m;
    int stop; /* atomic */
    int64_t next_rev; /* resume from here */
    int cut;          /* watch thread: end this stream (and resume) */
    int resync;       /* 1: events were lost; 2: re-established, tell cb */
    int64_t rx_us;    /* watch thread: bytes last came from the stream */
    /* establishment handshake */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int state; /* 0 connecting, 1 created, -1 gave up */
    int down;  /* watch thread: the stream is broken, reconnecting */
    char err[768];
    /* line assembly */
    char *line;
    size_t n, cap;
    int over;
};

static int stopped(mc_etcd_watch_t *w)
{
    return __atomic_load_n(&w->stop, __ATOMIC_ACQUIRE);
}

static int watch_state(mc_etcd_watch_t *w)
{
    pthread_mutex_lock(&w->lock);
    int s = w->state;
    pthread_mutex_unlock(&w->lock);
    return s;
}

static void watch_set_state(mc_etcd_watch_t *w, int s)
{
    pthread_mutex_lock(&w->lock);
    if (w->state == 0) w->state = s;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

/* One JSON message of the stream. */
static void watch_msg(mc_etcd_watch_t *w, const char *p, size_t n)
{
    cJSON *j = cJSON_ParseWithLength(p, n);
    if (!j) {
        MC_LOG(MC_LOG_WARN, "etcd watch %s: unparsable message (%zu bytes)",
               w->key, n);
        return;
    }
    const cJSON *res = cJSON_GetObjectItemCaseSensitive(j, "result");
    if (!res) {
        const cJSON *er = cJSON_GetObjectItemCaseSensitive(j, "error");
        MC_LOG(MC_LOG_WARN, "etcd watch %s: %s", w->key,
               er ? "error message from the server" : "message without result");
        cJSON_Delete(j);
        return;
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "created"))) {
        int64_t hr = header_rev(res);
        if (w->down)
            MC_LOG(MC_LOG_WARN,
                   "etcd watch %s: resumed from revision %" PRId64, w->key,
                   w->next_rev ? w->next_rev : hr + 1);
        w->down = 0;
        if (w->next_rev == 0) w->next_rev = hr + 1;
        if (w->resync == 1) w->resync = 2; /* the thread tells cb */
        watch_set_state(w, 1);
    }
    /* Cancelled by the server: above all when the revision to resume from
     * was compacted away (after an outage), and then the events between
     * are gone. Such a stream delivers nothing more; it is cut and the
     * watch starts again from the current revision, after which the
     * callback is told to read the state again (MC_ETCD_RESYNC). */
    int64_t compact = j_i64(res, "compact_revision");
    if (compact > 0 ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(res, "canceled"))) {
        MC_LOG(MC_LOG_WARN,
               "etcd watch %s: cancelled by the server (%s %" PRId64
               "); watching again from the current revision, the state is "
               "read again",
               w->key,
               compact > 0 ? "revisions compacted up to"
                           : "resuming from revision",
               compact > 0 ? compact : w->next_rev);
        w->resync = 1;
        w->next_rev = 0;
        w->cut = 1;
        cJSON_Delete(j);
        return;
    }
    /* One revision may hold several events (a transaction, a prefix
     * delete): every event from `from` on is new, the floor moves after. */
    int64_t from = w->next_rev, top = 0;
    const cJSON *evs = cJSON_GetObjectItemCaseSensitive(res, "events");
    const cJSON *ev;
    cJSON_ArrayForEach(ev, evs)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(ev, "type");
        int type = cJSON_IsString(t) && strcmp(t->valuestring, "DELETE") == 0
                       ? MC_ETCD_DELETE
                       : MC_ETCD_PUT;
        mc_etcd_kv_t kv;
        if (kv_from_json(cJSON_GetObjectItemCaseSensitive(ev, "kv"), &kv) !=
            MC_OK)
            continue;
        if (kv.mod_rev >= from || kv.mod_rev == 0) {
            if (kv.mod_rev > top) top = kv.mod_rev;
            w->cb(w->arg, type, &kv);
        }
        mc_etcd_kvs_free(&kv, 1);
    }
    if (top >= w->next_rev) w->next_rev = top + 1;
    cJSON_Delete(j);
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static size_t watch_write(char *data, size_t sz, size_t nm, void *arg)
{
    mc_etcd_watch_t *w = arg;
    size_t n = sz * nm;
    w->rx_us = mono_us();
    for (size_t i = 0; i < n && !w->cut; i++) {
        char ch = data[i];
        if (ch == '\n') {
            if (w->n && !w->over) watch_msg(w, w->line, w->n);
            w->n = 0;
            w->over = 0;
            continue;
        }
        if (w->over) continue;
        if (w->n + 2 > w->cap) {
            size_t cap = w->cap ? 2 * w->cap : 4096;
            if (cap > MC_ETCD_MAX_RESP) {
                w->over = 1;
                MC_LOG(MC_LOG_ERROR,
                       "etcd watch %s: a message over %zu bytes; dropped",
                       w->key, (size_t)MC_ETCD_MAX_RESP);
                continue;
            }
            char *p = realloc(w->line, cap);
            if (!p) return 0;
            w->line = p;
            w->cap = cap;
        }
        w->line[w->n++] = ch;
    }
    /* a message may also end without a newline at a chunk boundary: try */
    if (w->n && !w->over && !w->cut && w->line[w->n - 1] == '}') {
        cJSON *j = cJSON_ParseWithLength(w->line, w->n);
        if (j) {
            cJSON_Delete(j);
            watch_msg(w, w->line, w->n);
            w->n = 0;
        }
    }
    return w->cut ? 0 : n; /* 0 ends the transfer */
}

static char *watch_body(mc_etcd_watch_t *w)
{
    cJSON *q = cJSON_CreateObject();
    cJSON *c = cJSON_AddObjectToObject(q, "create_request");
    if (!c || !j_add_b64(c, "key", w->key, strlen(w->key)) ||
        (w->prefix && !j_add_prefix_end(c, w->key))) {
        cJSON_Delete(q);
        return NULL;
    }
    if (w->next_rev) j_add_i64(c, "start_revision", w->next_rev);
    char *s = cJSON_PrintUnformatted(q);
    cJSON_Delete(q);
    return s;
}

/* A stream that brings nothing for MC_ETCD_WATCH_QUIET_US has its endpoint
 * asked for a linearizable read of the watched key (count only). A member
 * that is stopped (its kernel still answers TCP, keepalive probes too) or
 * cut off from its cluster's leader never ends the stream and never sends
 * another event; without an answer within MC_ETCD_WATCH_PROBE_MS (or the
 * client's timeout, if lower) the stream is cut and the watch resumes on the
 * next endpoint from the last revision seen. */
#define MC_ETCD_WATCH_QUIET_US 2000000
#define MC_ETCD_WATCH_PROBE_MS 1000

static int watch_probe(mc_etcd_watch_t *w, const char *base)
{
    cJSON *q = cJSON_CreateObject();
    if (!q || !j_add_b64(q, "key", w->key, strlen(w->key)) ||
        (w->prefix && !j_add_prefix_end(q, w->key))) {
        cJSON_Delete(q);
        return 1; /* no verdict */
    }
    cJSON_AddTrueToObject(q, "count_only");
    char *body = cJSON_PrintUnformatted(q);
    cJSON_Delete(q);
    CURL *h = body ? curl_easy_init() : NULL;
    if (!h) {
        free(body);
        return 1;
    }
    char url[600];
    snprintf(url, sizeof(url), "%s/v3/kv/range", base);
    long ms = w->e->timeout_ms < MC_ETCD_WATCH_PROBE_MS
                  ? (long)w->e->timeout_ms
                  : MC_ETCD_WATCH_PROBE_MS;
    rbuf_t b = {0};
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, rbuf_write);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(h);
    free(body);
    free(b.p);
    if (rc == CURLE_OK && code == 200) return 1;
    MC_LOG(MC_LOG_WARN,
           "etcd watch %s: %s did not answer a read (%s, HTTP %ld) while "
           "its stream was quiet: moving to the next endpoint",
           w->key, base, curl_easy_strerror(rc), code);
    return 0;
}

static void *watch_main(void *arg)
{
    mc_etcd_watch_t *w = arg;
    mc_etcd_t *e = w->e;
    int ep = e->cur, fails = 0;
    while (!stopped(w)) {
        char *body = watch_body(w);
        if (!body) {
            snprintf(w->err, sizeof(w->err), "out of memory");
            watch_set_state(w, -1);
            break;
        }
        const char *base = e->ep[ep % e->nep];
        char url[600];
        snprintf(url, sizeof(url), "%s/v3/watch", base);
        CURL *h = curl_easy_init();
        if (!h) {
            free(body);
            snprintf(w->err, sizeof(w->err), "curl_easy_init failed");
            watch_set_state(w, -1);
            break;
        }
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, watch_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, w);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                         (long)(e->timeout_ms < 1000 ? e->timeout_ms : 1000));
        /* a member that dies silently: keepalive probes end the stream */
        curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 1L);
        curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 1L);
        w->n = 0;
        w->over = 0;
        w->cut = 0;
        w->rx_us = mono_us();
        int64_t asked_us = w->rx_us; /* the endpoint last answered a probe */
        int quiet_cut = 0;
        curl_multi_add_handle(w->m, h);
        CURLcode rc = CURLE_OK;
        int running = 1;
        while (running && !stopped(w)) {
            curl_multi_perform(w->m, &running);
            CURLMsg *msg;
            int left;
            while ((msg = curl_multi_info_read(w->m, &left)))
                if (msg->msg == CURLMSG_DONE) rc = msg->data.result;
            if (w->resync == 2) {
                w->resync = 0;
                w->cb(w->arg, MC_ETCD_RESYNC, NULL);
            }
            if (!running || w->cut) break;
            int64_t last = w->rx_us > asked_us ? w->rx_us : asked_us;
            int64_t quiet = mono_us() - last;
            if (quiet >= MC_ETCD_WATCH_QUIET_US &&
                watch_state(w) == 1) {
                if (!watch_probe(w, base)) {
                    quiet_cut = 1;
                    break;
                }
                asked_us = mono_us();
                quiet = 0;
            }
            int64_t left_ms = (MC_ETCD_WATCH_QUIET_US - quiet) / 1000 + 1;
            curl_multi_poll(w->m, NULL, 0, left_ms < 1000 ? (int)left_ms : 1000,
                            NULL);
        }
        long code = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        curl_multi_remove_handle(w->m, h);
        curl_easy_cleanup(h);
        free(body);
        if (stopped(w)) break;
        if (w->cut) {
            /* cancelled (watch_msg logged it): again from now, same
             * endpoint, after a pause that keeps a repeating cancel cool */
            w->down = 1;
            for (int i = 0; i < 20 && !stopped(w); i++) /* 100 ms */
                usleep(5000);
            continue;
        }
        fails++;
        int est = watch_state(w);
        if (est == 0 && fails >= 2 * e->nep) {
            snprintf(w->err, sizeof(w->err), "%s: %s (HTTP %ld)", url,
                     curl_easy_strerror(rc), code);
            watch_set_state(w, -1);
            break;
        }
        /* once per outage at warn level: reconnects run every 100 ms */
        if (!quiet_cut)
            MC_LOG(est && !w->down ? MC_LOG_WARN : MC_LOG_DEBUG,
                   "etcd watch %s: stream from %s ended (%s, HTTP %ld); "
                   "resuming from revision %" PRId64 " on the next endpoint",
                   w->key, url, curl_easy_strerror(rc), code, w->next_rev);
        w->down = 1;
        ep++;
        for (int i = 0; i < 20 && !stopped(w); i++) /* 100 ms, stoppable */
            usleep(5000);
    }
    return NULL;
}

mc_status_t mc_etcd_watch(mc_etcd_t *e, const char *key, int prefix,
                          int64_t start_rev, mc_etcd_watch_cb cb, void *arg,
                          mc_etcd_watch_t **w_p)
{
    mc_etcd_watch_t *w = calloc(1, sizeof(*w));
    if (!w) return mc_err(MC_ERR_NO_MEMORY, "etcd watch: out of memory");
    w->e = e;
    w->key = strdup(key);
    w->prefix = prefix;
    w->cb = cb;
    w->arg = arg;
    w->next_rev = start_rev;
    w->m = curl_multi_init();
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (!w->key || !w->m || pthread_create(&w->th, NULL, watch_main, w)) {
        if (w->m) curl_multi_cleanup(w->m);
        free(w->key);
        free(w);
        return mc_err(MC_ERR_NO_MEMORY, "etcd watch %s: cannot start", key);
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ms = e->timeout_ms * e->nep;
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&w->lock);
    while (w->state == 0)
        if (pthread_cond_timedwait(&w->cond, &w->lock, &ts) == ETIMEDOUT) break;
    int state = w->state;
    pthread_mutex_unlock(&w->lock);
    if (state != 1) {
        char why[768];
        snprintf(why, sizeof(why), "%s", w->err[0] ? w->err : "no answer");
        mc_etcd_watch_stop(w);
        return mc_err(state == 0 ? MC_ERR_TIMEOUT : MC_ERR_IO,
                      "etcd watch %s: not established: %s", key, why);
    }
    *w_p = w;
    return MC_OK;
}

void mc_etcd_watch_stop(mc_etcd_watch_t *w)
{
    if (!w) return;
    __atomic_store_n(&w->stop, 1, __ATOMIC_RELEASE);
    curl_multi_wakeup(w->m);
    pthread_join(w->th, NULL);
    curl_multi_cleanup(w->m);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
    free(w->line);
    free(w->key);
    free(w);
}

/* Stubs for transport slots a transport does not support (libfabric fi_no_*).
 */
#include "transport/transport.h"

#include <stdlib.h>
#include <string.h>

#include "mc_log.h"

mc_status_t mc_tl_stub_mem_reg(mc_tl_t *tl, void *addr, size_t len,
                               mc_mr_t **mr_p)
{
    (void)tl, (void)addr, (void)len, (void)mr_p;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_mem_dereg(mc_tl_t *tl, mc_mr_t *mr)
{
    (void)tl, (void)mr;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_put(mc_tl_t *tl, int peer, const void *src, mc_mr_t *lmr,
                           uint64_t raddr, uint64_t rkey, size_t len,
                           mc_xfer_t *x)
{
    (void)tl, (void)peer, (void)src, (void)lmr, (void)raddr, (void)rkey;
    (void)len, (void)x;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_add_peer(mc_tl_t *tl, int peer, uint64_t incarnation,
                                int64_t timeout_ms)
{
    (void)tl, (void)peer, (void)incarnation, (void)timeout_ms;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_signal(mc_tl_t *tl, int peer, int slot, uint64_t value)
{
    (void)tl, (void)peer, (void)slot, (void)value;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_peek(mc_tl_t *tl, int peer, int slot, uint64_t *value_p)
{
    (void)tl, (void)peer, (void)slot, (void)value_p;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_sent_held(mc_tl_t *tl, int peer, int ch)
{
    (void)tl, (void)peer, (void)ch;
    return MC_ERR_UNSUPPORTED;
}

mc_status_t mc_tl_stub_ack_now(mc_tl_t *tl, int peer, int ch)
{
    (void)tl, (void)peer, (void)ch;
    return MC_ERR_UNSUPPORTED;
}

int mc_tl_stub_release_send(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                            int drop, mc_status_t st)
{
    (void)tl, (void)peer, (void)ch, (void)x, (void)drop, (void)st;
    return MC_ERR_UNSUPPORTED;
}

int mc_tl_stub_release_recv(mc_tl_t *tl, int peer, int ch, mc_xfer_t *x,
                            mc_status_t st)
{
    (void)tl, (void)peer, (void)ch, (void)x, (void)st;
    return MC_ERR_UNSUPPORTED;
}

/* The rest of a released send (its bytes) or receive (a sink), owned by
 * the transport: freed by its own completion (written or read, or failed
 * with the peer) or by mc_tl_owned_free. A receive's rest is read through
 * a chain of transfers of at most MC_TL_SINK_CHUNK bytes that share one
 * block (`blk`, counted), so a GiB still to come costs a MiB. */
#define MC_TL_SINK_CHUNK ((size_t)1 << 20)

typedef struct mc_sink_blk {
    size_t refs;
    unsigned char data[];
} mc_sink_blk_t;

typedef struct mc_xfer_copy {
    mc_xfer_t x; /* first: the callback gets &copy->x */
    struct mc_xfer_copy *prev, *next;
    mc_tl_owned_t *own;
    mc_sink_blk_t *blk; /* a sink's shared block, or NULL */
    unsigned char data[];
} mc_xfer_copy_t;

static void copy_free(mc_xfer_copy_t *c)
{
    if (c->blk && --c->blk->refs == 0) free(c->blk);
    free(c);
}

static void copy_unlink(mc_xfer_copy_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        c->own->head = c->next;
    if (c->next) c->next->prev = c->prev;
}

static void copy_done(mc_xfer_t *x)
{
    mc_xfer_copy_t *c = (mc_xfer_copy_t *)x;
    copy_unlink(c);
    copy_free(c);
}

static mc_xfer_copy_t *copy_new(mc_tl_owned_t *own, size_t inline_len,
                                mc_sink_blk_t *blk, void *buf, size_t len)
{
    mc_xfer_copy_t *c = malloc(sizeof(*c) + inline_len);
    if (!c) return NULL;
    c->x = (mc_xfer_t){.buf = buf ? buf : c->data,
                       .len = len,
                       .cb = copy_done,
                       .status = MC_INPROGRESS};
    c->own = own;
    c->blk = blk;
    if (blk) blk->refs++;
    c->prev = NULL;
    c->next = own->head;
    if (own->head) own->head->prev = c;
    own->head = c;
    return c;
}

/* The transfers that take x's place: first and last of a list. */
static mc_status_t rest_new(mc_tl_owned_t *own, const mc_xfer_t *x, int is_send,
                            mc_xfer_t **first_p, mc_xfer_t **last_p)
{
    size_t left = x->len - x->off;
    if (is_send) {
        mc_xfer_copy_t *c = copy_new(own, left, NULL, NULL, left);
        if (!c) return MC_ERR_NO_MEMORY;
        memcpy(c->data, (const unsigned char *)x->buf + x->off, left);
        *first_p = *last_p = &c->x;
        return MC_OK;
    }
    size_t blen = left < MC_TL_SINK_CHUNK ? left : MC_TL_SINK_CHUNK;
    mc_sink_blk_t *blk = malloc(sizeof(*blk) + blen);
    if (!blk) return MC_ERR_NO_MEMORY;
    blk->refs = 1; /* ours while building */
    mc_xfer_t *first = NULL, *last = NULL;
    for (size_t done = 0; done < left; done += blen) {
        size_t n = left - done < blen ? left - done : blen;
        mc_xfer_copy_t *c = copy_new(own, 0, blk, blk->data, n);
        if (!c) {
            for (mc_xfer_t *y = first; y;) {
                mc_xfer_t *next = y->next;
                copy_unlink((mc_xfer_copy_t *)y);
                copy_free((mc_xfer_copy_t *)y);
                y = next;
            }
            free(blk); /* only our reference was left */
            return MC_ERR_NO_MEMORY;
        }
        if (last)
            last->next = &c->x;
        else
            first = &c->x;
        last = &c->x;
    }
    if (--blk->refs == 0) free(blk); /* (left > 0: never) */
    *first_p = first;
    *last_p = last;
    return MC_OK;
}

int mc_tl_q_release(mc_tl_owned_t *own, mc_xfer_t **head, mc_xfer_t **tail,
                    mc_xfer_t *x, int is_send, int drop, mc_status_t st)
{
    mc_xfer_t *prev = NULL, *y = *head;
    while (y && y != x) {
        prev = y;
        y = y->next;
    }
    if (!y) return MC_ERR_INVALID_ARG;
    int dropped = is_send && drop && x->off == 0;
    mc_xfer_t *first = NULL, *last = NULL;
    if (!dropped && x->off < x->len) {
        mc_status_t rc = rest_new(own, x, is_send, &first, &last);
        if (rc != MC_OK) return rc;
        last->next = x->next;
    }
    mc_xfer_t *after = first ? first : x->next;
    if (prev)
        prev->next = after;
    else
        *head = after;
    if (*tail == x) *tail = last ? last : prev;
    x->next = NULL;
    mc_xfer_cb_t cb = x->cb;
    __atomic_store_n(&x->status, (int)st, __ATOMIC_RELEASE);
    if (cb) cb(x);
    return dropped;
}

void mc_tl_owned_free(mc_tl_owned_t *own)
{
    while (own->head) {
        mc_xfer_copy_t *c = own->head;
        own->head = c->next;
        copy_free(c);
    }
}

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

/* The rest of a released send (its bytes) or receive (a sink), owned by
 * the transport: freed by its own completion (written or read, or failed
 * with the peer) or by mc_tl_owned_free. */
typedef struct mc_xfer_copy {
    mc_xfer_t x; /* first: the callback gets &copy->x */
    struct mc_xfer_copy *prev, *next;
    mc_tl_owned_t *own;
    unsigned char data[];
} mc_xfer_copy_t;

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
    free(c);
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
    mc_xfer_t *rep = NULL;
    if (!dropped && x->off < x->len) {
        size_t left = x->len - x->off;
        mc_xfer_copy_t *c = malloc(sizeof(*c) + left);
        if (!c) return MC_ERR_NO_MEMORY;
        if (is_send) /* a receive's rest lands in c->data, unread */
            memcpy(c->data, (const unsigned char *)x->buf + x->off, left);
        c->x = (mc_xfer_t){.buf = c->data,
                           .len = left,
                           .cb = copy_done,
                           .status = MC_INPROGRESS};
        c->own = own;
        c->prev = NULL;
        c->next = own->head;
        if (own->head) own->head->prev = c;
        own->head = c;
        rep = &c->x;
    }
    mc_xfer_t *after = rep ? rep : x->next;
    if (rep) rep->next = x->next;
    if (prev)
        prev->next = after;
    else
        *head = after;
    if (*tail == x) *tail = rep ? rep : prev;
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
        free(c);
    }
}

/*
 * mc_tl_q_release and mc_tl_owned_free (transport.c), the list work behind
 * the transports' release_send / release_recv: a released transfer leaves
 * its stream's FIFO, completes with the given status, and what it still
 * owed the stream takes its place: a copy of a send's unsent bytes, a
 * chain of sink transfers (at most 1 MiB each, one shared block) for the
 * bytes a receive still expected. A send none of which went is dropped
 * when asked. The queue's order, tail and length in bytes stay right, and
 * whatever the transport owns is freed once it completes, or at destroy
 * (ASan's leak check).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "transport/transport.h"

typedef struct {
    mc_xfer_t *head, *tail;
} q_t;

static int g_done;
static mc_status_t g_last;

static void on_done(mc_xfer_t *x)
{
    g_done++;
    g_last = (mc_status_t)x->status;
}

static void push(q_t *q, mc_xfer_t *x, void *buf, size_t len, size_t off)
{
    *x = (mc_xfer_t){.buf = buf,
                     .len = len,
                     .off = off,
                     .cb = on_done,
                     .status = MC_INPROGRESS};
    if (q->tail)
        q->tail->next = x;
    else
        q->head = x;
    q->tail = x;
}

/* Total bytes still owed by the queue, and its length; checks the tail. */
static size_t q_bytes(const q_t *q, int *n_p)
{
    size_t b = 0;
    int n = 0;
    const mc_xfer_t *last = NULL;
    for (const mc_xfer_t *x = q->head; x; x = x->next) {
        b += x->len - x->off;
        n++;
        last = x;
    }
    assert_ptr_equal(last, q->tail);
    *n_p = n;
    return b;
}

/* Complete every transfer of the queue as a transport would (its bytes
 * moved), running the callbacks that free owned ones. */
static void q_drain(q_t *q)
{
    while (q->head) {
        mc_xfer_t *x = q->head;
        q->head = x->next;
        if (!q->head) q->tail = NULL;
        x->off = x->len;
        mc_xfer_cb_t cb = x->cb;
        x->status = MC_OK;
        if (cb) cb(x);
    }
}

static void test_send_partly_written(void **state)
{
    (void)state;
    mc_tl_owned_t own = {0};
    q_t q = {0};
    mc_xfer_t a, b, c;
    unsigned char pa[100], pb[4000], pc[10];
    for (size_t i = 0; i < sizeof(pb); i++)
        pb[i] = (unsigned char)(i * 7);
    push(&q, &a, pa, sizeof(pa), 100); /* written, not completed yet */
    push(&q, &b, pb, sizeof(pb), 1000);
    push(&q, &c, pc, sizeof(pc), 0);
    g_done = 0;
    /* drop asked, but 1000 bytes went: the rest goes from a copy */
    assert_int_equal(
        mc_tl_q_release(&own, &q.head, &q.tail, &b, 1, 1, MC_ERR_PEER_FAILED),
        0);
    assert_int_equal(g_done, 1);
    assert_int_equal(g_last, MC_ERR_PEER_FAILED);
    assert_int_equal(b.status, MC_ERR_PEER_FAILED);
    assert_ptr_equal(q.head, &a);
    mc_xfer_t *r = a.next;
    assert_true(r != &b && r->next == &c);
    assert_int_equal(r->len, 3000);
    memset(pb, 0xEE, sizeof(pb)); /* the caller's again */
    for (size_t i = 0; i < 3000; i++)
        assert_int_equal(((unsigned char *)r->buf)[i],
                         (unsigned char)((i + 1000) * 7));
    int n;
    assert_int_equal(q_bytes(&q, &n), 3000 + 10);
    assert_int_equal(n, 3);
    /* the tail, nothing of it gone, dropped */
    assert_int_equal(
        mc_tl_q_release(&own, &q.head, &q.tail, &c, 1, 1, MC_ERR_PEER_FAILED),
        1);
    assert_ptr_equal(q.tail, r);
    assert_null(r->next);
    /* a written one: nothing to copy, it just leaves */
    assert_int_equal(
        mc_tl_q_release(&own, &q.head, &q.tail, &a, 1, 0, MC_ERR_PEER_FAILED),
        0);
    assert_ptr_equal(q.head, r);
    assert_int_equal(q_bytes(&q, &n), 3000);
    /* not on the list: refused, nothing touched */
    g_done = 0;
    assert_int_equal(
        mc_tl_q_release(&own, &q.head, &q.tail, &a, 1, 1, MC_ERR_PEER_FAILED),
        MC_ERR_INVALID_ARG);
    assert_int_equal(g_done, 0);
    q_drain(&q); /* the copy frees itself */
    assert_null(own.head);
}

static void test_send_not_dropped_when_asked_not_to(void **state)
{
    (void)state;
    mc_tl_owned_t own = {0};
    q_t q = {0};
    mc_xfer_t h, p;
    unsigned char hb[32] = {1}, pb[64] = {2};
    push(&q, &h, hb, sizeof(hb), 32); /* header went */
    push(&q, &p, pb, sizeof(pb), 0);  /* payload: none yet, must go */
    assert_int_equal(
        mc_tl_q_release(&own, &q.head, &q.tail, &h, 1, 1, MC_ERR_PEER_FAILED),
        0);
    assert_int_equal(
        mc_tl_q_release(&own, &q.head, &q.tail, &p, 1, 0, MC_ERR_PEER_FAILED),
        0);
    int n;
    assert_int_equal(q_bytes(&q, &n), 64);
    assert_int_equal(n, 1);
    assert_int_equal(((unsigned char *)q.head->buf)[0], 2);
    /* left queued: freed at destroy */
    mc_tl_owned_free(&own);
    assert_null(own.head);
}

static void test_recv_sink_chain(void **state)
{
    (void)state;
    mc_tl_owned_t own = {0};
    q_t q = {0};
    mc_xfer_t hdr, pay, next;
    size_t len = (5u << 20) + 4096 + 123; /* 4 KiB in, 5 MiB + 123 to come */
    unsigned char *buf = malloc(len), hb[32], nb[32];
    assert_non_null(buf);
    push(&q, &hdr, hb, sizeof(hb), 32);
    push(&q, &pay, buf, len, 4096);
    push(&q, &next, nb, sizeof(nb), 0);
    /* drop is ignored for a receive: the bytes come anyway */
    assert_int_equal(mc_tl_q_release(&own, &q.head, &q.tail, &pay, 0, 1, MC_OK),
                     0);
    assert_int_equal(pay.status, MC_OK);
    free(buf); /* nothing may write it any more */
    int n;
    assert_int_equal(q_bytes(&q, &n), 32 - 32 + (len - 4096) + 32);
    /* header, 5 chunks of 1 MiB and one of the rest, the next header */
    assert_int_equal(n, 1 + 6 + 1);
    const void *blk = hdr.next->buf;
    int chunks = 0;
    for (mc_xfer_t *x = hdr.next; x != &next; x = x->next, chunks++) {
        assert_ptr_equal(x->buf, blk); /* one block */
        assert_true(x->len <= (1u << 20));
    }
    assert_int_equal(chunks, 6);
    assert_ptr_equal(q.tail, &next);
    /* half of the chain read, then destroy: block and rest freed */
    for (int i = 0; i < 3; i++) {
        mc_xfer_t *x = hdr.next;
        hdr.next = x->next;
        x->off = x->len;
        x->status = MC_OK;
        x->cb(x);
    }
    mc_tl_owned_free(&own);
    assert_null(own.head);
}

static void test_recv_sink_small_and_drained(void **state)
{
    (void)state;
    mc_tl_owned_t own = {0};
    q_t q = {0};
    mc_xfer_t pay;
    unsigned char buf[300];
    push(&q, &pay, buf, sizeof(buf), 100);
    assert_int_equal(
        mc_tl_q_release(&own, &q.head, &q.tail, &pay, 0, 0, MC_ERR_PEER_FAILED),
        0);
    int n;
    assert_int_equal(q_bytes(&q, &n), 200);
    assert_int_equal(n, 1);
    q_drain(&q); /* the last chunk frees the block */
    assert_null(own.head);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_send_partly_written),
        cmocka_unit_test(test_send_not_dropped_when_asked_not_to),
        cmocka_unit_test(test_recv_sink_chain),
        cmocka_unit_test(test_recv_sink_small_and_drained),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Internal: the single-producer / single-consumer byte ring of the shared
 * memory transport (shm.c).
 *
 * A ring lives in the consumer's segment: one page of counters followed by
 * `cap` bytes of data (cap a power of two). `head` counts every byte the
 * producer has ever written and `tail` every byte the consumer has ever
 * read; both only grow, so head - tail is the fill level and wrap-around is
 * just `counter & mask`. Each counter has one writer and sits on its own
 * 128-byte block (two cache lines, so the adjacent-line prefetcher does not
 * couple them).
 *
 * Ordering: the producer copies data, then release-stores head; the consumer
 * acquire-loads head, copies, then release-stores tail; the producer
 * acquire-loads tail before reusing space. Each side keeps the other's
 * counter cached in its private mc_shm_ring_t and reloads it only when the
 * cached value says the ring is full (producer) or empty (consumer), so in
 * steady streaming the counters' cache lines move once per refill, not once
 * per copy.
 *
 * Shared counters are not trusted: a corrupt value cannot make a copy leave
 * the ring (every index is masked), and the reload helpers report a fill
 * level above `cap` so the caller can fail the peer.
 */
#ifndef MC_SHM_RING_H
#define MC_SHM_RING_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MC_SHM_RING_CTRL_BYTES 4096u /* counters page before the data */

typedef struct mc_shm_ring_hdr {
    _Alignas(128) uint64_t head; /* written by the producer only */
    _Alignas(128) uint64_t tail; /* written by the consumer only */
    /* the transport's signal words (transport.h) of the collective
     * channel: written by the producer only, outside the byte stream */
    _Alignas(128) uint64_t sig[2];
} mc_shm_ring_hdr_t;

_Static_assert(sizeof(mc_shm_ring_hdr_t) <= MC_SHM_RING_CTRL_BYTES,
               "ring counters must fit their page");

/* One side's private view of a ring. */
typedef struct mc_shm_ring {
    mc_shm_ring_hdr_t *hdr;
    uint8_t *data;
    uint64_t cap, mask;
    uint64_t pos;   /* own counter: head (producer) or tail (consumer) */
    uint64_t other; /* last value seen of the other side's counter */
} mc_shm_ring_t;

/* Largest piece copied before the counter is published (and a sleeping
 * peer woken), so the other side can work on the first part of a big
 * transfer while this side copies the rest. */
#ifndef MC_SHM_RING_CHUNK
#define MC_SHM_RING_CHUNK ((uint64_t)128 << 10)
#endif

static inline void mc_shm_ring_init(mc_shm_ring_t *r, void *base, uint64_t cap)
{
    r->hdr = (mc_shm_ring_hdr_t *)base;
    r->data = (uint8_t *)base + MC_SHM_RING_CTRL_BYTES;
    r->cap = cap;
    r->mask = cap - 1;
    r->pos = 0;
    r->other = 0;
}

/* Producer: free bytes, reloading tail. Returns UINT64_MAX if the shared
 * tail is impossible (ahead of head, or more than cap behind). */
static inline uint64_t mc_shm_ring_space_reload(mc_shm_ring_t *r)
{
    uint64_t t = __atomic_load_n(&r->hdr->tail, __ATOMIC_ACQUIRE);
    uint64_t used = r->pos - t;
    if (used > r->cap) return UINT64_MAX;
    r->other = t;
    return r->cap - used;
}

/* Consumer: readable bytes, reloading head. UINT64_MAX if impossible. */
static inline uint64_t mc_shm_ring_avail_reload(mc_shm_ring_t *r)
{
    uint64_t h = __atomic_load_n(&r->hdr->head, __ATOMIC_ACQUIRE);
    uint64_t avail = h - r->pos;
    if (avail > r->cap) return UINT64_MAX;
    r->other = h;
    return avail;
}

/*
 * Producer: copy up to len bytes from src and publish them. Returns the
 * bytes written (0 if the ring is full), or SIZE_MAX if the shared tail is
 * corrupt. Callers copy big transfers in MC_SHM_RING_CHUNK pieces.
 */
static inline size_t mc_shm_ring_write(mc_shm_ring_t *r, const void *src,
                                       size_t len)
{
    uint64_t space = r->cap - (r->pos - r->other);
    if (space < len) {
        space = mc_shm_ring_space_reload(r);
        if (space == UINT64_MAX) return SIZE_MAX;
    }
    size_t n = len < space ? len : (size_t)space;
    if (n == 0) return 0;
    uint64_t off = r->pos & r->mask;
    size_t first = n < r->cap - off ? n : (size_t)(r->cap - off);
    memcpy(r->data + off, src, first);
    if (n > first) memcpy(r->data, (const uint8_t *)src + first, n - first);
    r->pos += n;
    __atomic_store_n(&r->hdr->head, r->pos, __ATOMIC_RELEASE);
    return n;
}

/*
 * Consumer: copy up to len available bytes to dst and free their space.
 * Returns the bytes read (0 if empty), or SIZE_MAX if the shared head is
 * corrupt.
 */
static inline size_t mc_shm_ring_read(mc_shm_ring_t *r, void *dst, size_t len)
{
    uint64_t avail = r->other - r->pos;
    if (avail < len) {
        avail = mc_shm_ring_avail_reload(r);
        if (avail == UINT64_MAX) return SIZE_MAX;
    }
    size_t n = len < avail ? len : (size_t)avail;
    if (n == 0) return 0;
    uint64_t off = r->pos & r->mask;
    size_t first = n < r->cap - off ? n : (size_t)(r->cap - off);
    memcpy(dst, r->data + off, first);
    if (n > first) memcpy((uint8_t *)dst + first, r->data, n - first);
    r->pos += n;
    __atomic_store_n(&r->hdr->tail, r->pos, __ATOMIC_RELEASE);
    return n;
}

#endif /* MC_SHM_RING_H */

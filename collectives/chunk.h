/* Internal: splitting counts into blocks and pipeline chunks. */
#ifndef MC_CHUNK_H
#define MC_CHUNK_H

#include <stddef.h>

/* Split `total` items into `parts` nearly equal blocks: block i has
 * total/parts items, plus one for the first total%parts blocks. */
static inline void mc_block_range(size_t total, size_t parts, size_t i,
                                  size_t *off_p, size_t *len_p)
{
    size_t base = total / parts, rem = total % parts;
    *off_p = i * base + (i < rem ? i : rem);
    *len_p = base + (i < rem ? 1 : 0);
}

/* Number of pipeline chunks of at most `chunk` items needed for `total`
 * items; at least 1 (a zero-length transfer is still one frame). */
static inline size_t mc_chunk_count(size_t total, size_t chunk)
{
    if (chunk == 0) chunk = 1;
    return total == 0 ? 1 : (total + chunk - 1) / chunk;
}

/* Range of chunk i (see mc_chunk_count). */
static inline void mc_chunk_range(size_t total, size_t chunk, size_t i,
                                  size_t *off_p, size_t *len_p)
{
    if (chunk == 0) chunk = 1;
    size_t off = i * chunk;
    *off_p = off < total ? off : total;
    *len_p = off < total ? (total - off < chunk ? total - off : chunk) : 0;
}

#endif /* MC_CHUNK_H */

/*
 * Internal: the communicator, its requests, the wire header and the
 * progress engine (comm.c). See docs/design.md for the protocol.
 */
#ifndef MC_ENGINE_H
#define MC_ENGINE_H

#include <pthread.h>
#include <stdint.h>

#include "coll.h"
#include "mooncake/mooncake.h"
#include "transport/transport.h"

#define MC_WIRE_MAGIC 0x314b434du /* "MCK1" */

/* MC_KIND_LEFT: header only, on the p2p stream: the sender left the final
 * frame barrier of (epoch, seq), so every rank holds that op's result
 * (comm.c, left_notices). */
enum {
    MC_KIND_DATA = 1,
    MC_KIND_P2P = 2,
    MC_KIND_ABORT = 3,
    MC_KIND_CTRL = 4,
    MC_KIND_LEFT = 5
};

/* Every frame on the wire starts with this header (64 bytes, host byte
 * order: all ranks of a communicator share one architecture). The receiver
 * checks it against what it expects before it touches the payload. */
typedef struct mc_hdr {
    uint32_t magic;
    uint8_t kind;
    uint8_t coll;  /* mc_coll_t */
    uint8_t dtype; /* mc_dtype_t */
    uint8_t op;    /* mc_redop_t */
    int32_t root;
    uint32_t step;
    uint64_t seq;   /* collective sequence number (data, abort) */
    uint64_t epoch; /* view epoch; 1 until membership changes exist */
    uint64_t count; /* descriptor count (see desc_count in comm.c) */
    uint64_t desc;  /* hash of the whole descriptor incl. v-counts */
    uint64_t len;   /* payload bytes that follow */
    uint32_t tag;   /* p2p tag */
    int32_t src;    /* sender rank */
} mc_hdr_t;

_Static_assert(sizeof(mc_hdr_t) == 64, "wire header must be 64 bytes");

#define MC_ABORT_MSG_MAX 512u

#endif /* MC_ENGINE_H */

/*
 * Membership signals from etcd (MOONCAKE_ETCD_ENDPOINTS): each rank holds a
 * leased key <prefix>members/<slot>/<incarnation>, kept alive from its own
 * thread, and watches <prefix> (member keys and joiners' registrations). A member key that disappears (its
 * lease expired: the process stopped or lost etcd; or was revoked) is a
 * failure signal the engine treats like heartbeat silence (suspicion). A
 * rank whose own lease is gone (etcd answers TTL 0, or its key is deleted)
 * is fenced: it must stop and rejoin as a new process.
 *
 * While etcd is unreachable nothing changes: keepalives are retried and
 * the watch resumes from the last revision it saw, so the group keeps
 * running on its current view.
 */
#ifndef MC_ETCD_MEMBER_H
#define MC_ETCD_MEMBER_H

#include <stdint.h>

#include <mooncake/mooncake.h>

typedef struct mc_emember mc_emember_t;

/* Register slot `rank` (incarnation `inc`) with a lease of ttl_s seconds
 * and start watching the `size` slots. */
mc_status_t mc_emember_start(const char *endpoints, const char *prefix,
                             int rank, int size, uint64_t inc, int ttl_s,
                             int64_t timeout_ms, mc_emember_t **m_p);

/* A joiner's registration for `slot` (docs/fault-model 6): the leased key
 * <prefix>joins/<slot>/<nonce hex>, kept alive until mc_emember_stop
 * (which revokes it). If the joiner dies while it waits, the key expires
 * with its lease and the members forget the request. */
mc_status_t mc_emember_join_register(const char *endpoints,
                                     const char *prefix, int slot, int size,
                                     uint64_t nonce, int ttl_s,
                                     int64_t timeout_ms, mc_emember_t **m_p);

/* Members: nonce[q] = the registered joiner's request for slot q, or 0
 * (from the watch; `size` entries). Returns how many. fn(arg) is called
 * from the watch thread whenever that set changes. */
int mc_emember_joins(mc_emember_t *m, uint64_t *nonce);
void mc_emember_on_join(mc_emember_t *m, void (*fn)(void *arg), void *arg);

/* gone[q] = 1 for each slot q whose key for incarnation inc[q] was deleted
 * (and not put again since). Returns how many. */
int mc_emember_gone(mc_emember_t *m, const uint64_t *inc, uint8_t *gone);

/* 1 once this rank's own lease is known lost. */
int mc_emember_lost(mc_emember_t *m);

/* The view lives in <prefix>view ("<epoch> <start> <0/1 per slot>") and
 * moves only by a transaction from the view the caller holds: etcd decides
 * between coordinators that race (a partition, false suspicion).
 * view_init creates it if absent. view_commit moves it from (epoch, start,
 * active) to (nepoch, nstart, nactive): *ok = 1 if it did; else cur_* hold
 * the view etcd has (cur_active: `size` bytes). */
mc_status_t mc_emember_view_init(mc_emember_t *m, uint64_t epoch,
                                 uint64_t start, const uint8_t *active);
mc_status_t mc_emember_view_commit(mc_emember_t *m, uint64_t epoch,
                                   uint64_t start, const uint8_t *active,
                                   uint64_t nepoch, uint64_t nstart,
                                   const uint8_t *nactive, int *ok,
                                   uint64_t *cur_epoch, uint64_t *cur_start,
                                   uint8_t *cur_active);

/* Revoke the lease (the key goes at once) and stop the threads. */
void mc_emember_stop(mc_emember_t *m);

#endif

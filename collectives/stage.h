/*
 * Staging memory shared by the ranks of one host (internal).
 *
 * Each rank owns at most one staging region: an anonymous shared memory
 * file (memfd) that it maps, sized by the largest operation that used it.
 * A peer on the same host maps it by opening /proc/<pid>/fd/<fd> of the
 * owner (the same user may, as for any of its processes). Nothing has a
 * name in /dev/shm, so nothing is left behind whatever kills the
 * processes, and a mapping stays valid after its owner died: a survivor can
 * still read what a dead rank published, and writes into a dead rank's
 * region go nowhere harmful.
 *
 * The owner replaces its region (a new memfd, a new random id) when it
 * needs a larger one and whenever the view changes, so a process that was
 * removed from the view and still writes through its old mapping can never
 * touch the region that the new view uses. Peers learn a region's identity
 * (mc_stage_info_t) from the owner in a frame and remap when the id
 * changes; an old region is freed once the last process unmaps it.
 */
#ifndef MC_STAGE_H
#define MC_STAGE_H

#include <stddef.h>
#include <stdint.h>

/* Bytes at the start of every region that are not the caller's. */
#define MC_STAGE_HDR 4096u

typedef struct mc_stage_info {
    uint64_t rid;  /* random id of the region; 0: none (creating it failed) */
    uint64_t size; /* bytes */
    int64_t pid;   /* owner */
    int64_t fd;    /* in the owner's fd table */
} mc_stage_info_t;

typedef struct mc_stage mc_stage_t;

mc_stage_t *mc_stage_new(int nslots);
/* The same, with its memfd named `name` (a string that outlives it). */
mc_stage_t *mc_stage_new_named(int nslots, const char *name);
void mc_stage_free(mc_stage_t *s);

/* This rank's region of at least `bytes` bytes for view `epoch` (replaced if
 * it is smaller or of another view). Fills *info (rid 0 on failure, with
 * the reason in err) and returns the mapping, or NULL. */
void *mc_stage_own(mc_stage_t *s, uint64_t epoch, size_t bytes,
                   mc_stage_info_t *info, char *err, size_t errcap);

/* The region `info` of the rank in `slot`, mapped (kept while its id stays
 * the same). NULL on failure, with the reason in err. */
void *mc_stage_peer(mc_stage_t *s, int slot, const mc_stage_info_t *info,
                    char *err, size_t errcap);

/* The mapping of slot's region this process holds now, whatever the owner
 * did since (it may have replaced it): its id and size in *rid and *size,
 * or NULL (rid 0) if none. */
void *mc_stage_peer_cached(mc_stage_t *s, int slot, uint64_t *rid,
                           uint64_t *size);

#endif

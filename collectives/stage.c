/*
 * Staging memory shared by the ranks of one host: see stage.h.
 */
#define _GNU_SOURCE
#include "stage.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* The first page holds the region's id, which a peer checks after mapping
 * (an fd number can be reused by a newer region of the same owner). */
#define STAGE_HDR MC_STAGE_HDR

typedef struct stage_map {
    uint64_t rid;
    size_t size;
    void *p;
} stage_map_t;

struct mc_stage {
    int nslots;
    const char *name; /* of its memfd */
    int fd;          /* own memfd, -1 if none */
    stage_map_t own; /* own region */
    uint64_t epoch;  /* view it was made for */
    stage_map_t *peer; /* [nslots] mappings of the peers' regions */
};

static uint64_t stage_rid(void)
{
    uint64_t v = 0;
    if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v)) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        v = ((uint64_t)getpid() << 40) ^ (uint64_t)t.tv_nsec ^
            ((uint64_t)t.tv_sec << 20);
    }
    return v ? v : 1;
}

static void map_drop(stage_map_t *m)
{
    if (m->p) munmap(m->p, m->size);
    memset(m, 0, sizeof(*m));
}

mc_stage_t *mc_stage_new(int nslots)
{
    mc_stage_t *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->peer = calloc((size_t)nslots, sizeof(*s->peer));
    if (!s->peer) {
        free(s);
        return NULL;
    }
    s->nslots = nslots;
    s->fd = -1;
    return s;
}

mc_stage_t *mc_stage_new_named(int nslots, const char *name)
{
    mc_stage_t *s = mc_stage_new(nslots);
    if (s) s->name = name;
    return s;
}

static void own_drop(mc_stage_t *s)
{
    map_drop(&s->own);
    if (s->fd >= 0) close(s->fd);
    s->fd = -1;
}

void mc_stage_free(mc_stage_t *s)
{
    if (!s) return;
    for (int i = 0; i < s->nslots; i++)
        map_drop(&s->peer[i]);
    own_drop(s);
    free(s->peer);
    free(s);
}

void *mc_stage_own(mc_stage_t *s, uint64_t epoch, size_t bytes,
                   mc_stage_info_t *info, char *err, size_t errcap)
{
    memset(info, 0, sizeof(*info));
    if (bytes > ((size_t)1 << 61)) {
        snprintf(err, errcap, "staging region of %zu bytes: too large", bytes);
        return NULL;
    }
    if (!s->own.p || s->own.size < bytes + STAGE_HDR || s->epoch != epoch) {
        /* round up to a power of two (at least 1 MiB) so that growing
         * sizes do not replace the region every time */
        size_t want = (size_t)1 << 20;
        while (want < bytes + STAGE_HDR && want < ((size_t)1 << 62))
            want <<= 1;
        if (s->own.p && s->own.size > want)
            want = s->own.size; /* a new view: keep the size */
        own_drop(s);
        int fd = memfd_create(s->name ? s->name : "mooncake-stage",
                              MFD_CLOEXEC);
        if (fd < 0) {
            snprintf(err, errcap, "memfd_create: %s", strerror(errno));
            return NULL;
        }
        /* allocate it all now: a full tmpfs fails here, not with SIGBUS */
        int e = ftruncate(fd, (off_t)want) ? errno : 0;
        if (!e) e = posix_fallocate(fd, 0, (off_t)want);
        void *p = MAP_FAILED;
        if (!e) {
            p = mmap(NULL, want, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (p == MAP_FAILED) e = errno;
        }
        if (e) {
            snprintf(err, errcap, "staging region of %zu bytes: %s", want,
                     strerror(e));
            close(fd);
            return NULL;
        }
        s->fd = fd;
        s->own = (stage_map_t){.rid = stage_rid(), .size = want, .p = p};
        memcpy(p, &s->own.rid, sizeof(s->own.rid));
        s->epoch = epoch;
    }
    info->rid = s->own.rid;
    info->size = s->own.size;
    info->pid = (int64_t)getpid();
    info->fd = s->fd;
    return (char *)s->own.p + STAGE_HDR;
}

void *mc_stage_peer(mc_stage_t *s, int slot, const mc_stage_info_t *info,
                    char *err, size_t errcap)
{
    if (slot < 0 || slot >= s->nslots || !info->rid || !info->size ||
        info->size > ((uint64_t)1 << 62) || info->size <= STAGE_HDR ||
        info->pid <= 0 || info->fd < 0) {
        snprintf(err, errcap, "rank %d has no staging region", slot);
        return NULL;
    }
    stage_map_t *m = &s->peer[slot];
    if (m->p && m->rid == info->rid) return (char *)m->p + STAGE_HDR;
    map_drop(m); /* the owner replaced it: we are done with the old one */
    char path[64];
    snprintf(path, sizeof(path), "/proc/%lld/fd/%lld", (long long)info->pid,
             (long long)info->fd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errcap, "rank %d's staging region (%s): %s", slot, path,
                 strerror(errno));
        return NULL;
    }
    /* the fd number may have been reused by another file of the owner: it
     * must be a memfd of at least the size announced */
    off_t end = lseek(fd, 0, SEEK_END);
    if (end < 0 || (uint64_t)end < info->size) {
        snprintf(err, errcap,
                 "rank %d's staging region (%s) is not the announced one",
                 slot, path);
        close(fd);
        return NULL;
    }
    void *p = mmap(NULL, (size_t)info->size, PROT_READ | PROT_WRITE,
                   MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (p == MAP_FAILED) {
        snprintf(err, errcap, "mapping rank %d's staging region: %s", slot,
                 strerror(e));
        return NULL;
    }
    uint64_t rid;
    memcpy(&rid, p, sizeof(rid));
    if (rid != info->rid) {
        munmap(p, (size_t)info->size);
        snprintf(err, errcap,
                 "rank %d's staging region (%s) is not the announced one",
                 slot, path);
        return NULL;
    }
    *m = (stage_map_t){.rid = info->rid, .size = (size_t)info->size, .p = p};
    return (char *)p + STAGE_HDR;
}

void *mc_stage_peer_cached(mc_stage_t *s, int slot, uint64_t *rid,
                           uint64_t *size)
{
    *rid = 0;
    *size = 0;
    if (slot < 0 || slot >= s->nslots || !s->peer[slot].p) return NULL;
    *rid = s->peer[slot].rid;
    *size = s->peer[slot].size;
    return (char *)s->peer[slot].p + STAGE_HDR;
}

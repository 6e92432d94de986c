/* Real etcd clusters for the tests: Debian's etcd-server on a given IPv4
 * address (loopback by default), each member with a temporary data dir. */
#ifndef MC_TESTS_ETCD_CLUSTER_H
#define MC_TESTS_ETCD_CLUSTER_H

#include <sys/types.h>

#define MC_ETCD_MAXM 3

typedef struct {
    int n;
    pid_t pid[MC_ETCD_MAXM];
    int cport[MC_ETCD_MAXM], pport[MC_ETCD_MAXM];
    char *dir;
    char ip[16];
    char initial[512];   /* --initial-cluster */
    char endpoints[256]; /* "http://ip:port,..." for MOONCAKE_ETCD_ENDPOINTS */
} cluster_t;

/* The etcd binary, or NULL when it is not installed. */
const char *etcd_bin(void);
/* Start n members listening on ip (NULL: 127.0.0.1); returns once a put
 * through every endpoint succeeded (fails the cmocka test otherwise). */
cluster_t *cluster_start_on(int n, const char *ip);
cluster_t *cluster_start(int n);
/* (Re)start member i from its data dir; does not wait. */
void start_member(cluster_t *k, int i);
/* Wait until a put through member i succeeds (s seconds at most). */
void member_wait(cluster_t *k, int i, double s);
void member_kill(cluster_t *k, int i);
void cluster_stop(cluster_t *k);
/* A free TCP port on loopback. */
int free_port(void);

#endif

/*
 * Internal: how every socket of a rank picks and names its address, so the
 * TCP transport's data links and the liveness heartbeats take one path.
 */
#ifndef MC_SOCKADDR_H
#define MC_SOCKADDR_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "mooncake/mooncake.h"

/*
 * The local IPv4 address to bind: MOONCAKE_SOCKET_ADDR, else an UP
 * interface (MOONCAKE_SOCKET_IFNAME, or the first running non-loopback one
 * with IPv4), else 127.0.0.1. `who` prefixes error texts ("tcp",
 * "liveness"). Errors: MC_ERR_INVALID_ARG (bad setting), MC_ERR_IO.
 */
mc_status_t mc_sock_pick_addr(const char *who, struct in_addr *ip_p);

/* MOONCAKE_SOCKET_PORT_BASE (0: any port) in *base_p; MC_ERR_INVALID_ARG
 * when it is not a port. */
mc_status_t mc_sock_port_base(const char *who, int64_t *base_p);

/* Parse the first `len` bytes of s as "a.b.c.d:port" (port 1..65535) into
 * *sa. Returns 0, or -1 when malformed. */
int mc_sock_parse_addr(const char *s, size_t len, struct sockaddr_in *sa);

#endif /* MC_SOCKADDR_H */

/* Address choice shared by the TCP transport and the liveness module. */
#define _GNU_SOURCE
#include "sockaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stdlib.h>
#include <string.h>

#include "mc_log.h"

mc_status_t mc_sock_pick_addr(const char *who, struct in_addr *ip_p)
{
    const char *want = mc_env_str("MOONCAKE_SOCKET_ADDR", NULL);
    struct in_addr ip = {0};
    if (want) {
        if (inet_pton(AF_INET, want, &ip) != 1)
            return mc_err(MC_ERR_INVALID_ARG,
                          "%s: MOONCAKE_SOCKET_ADDR=%s is not an IPv4 address",
                          who, want);
        *ip_p = ip;
        return MC_OK;
    }
    const char *ifname = mc_env_str("MOONCAKE_SOCKET_IFNAME", NULL);
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0) {
        if (ifname)
            return mc_err(MC_ERR_IO, "%s: getifaddrs: %s", who,
                          strerror(errno));
        ifs = NULL;
    }
    int found = 0;
    for (struct ifaddrs *i = ifs; i && !found; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
        if (!(i->ifa_flags & IFF_UP)) continue;
        if (ifname) {
            if (strcmp(i->ifa_name, ifname) != 0) continue;
        } else if ((i->ifa_flags & IFF_LOOPBACK) ||
                   !(i->ifa_flags & IFF_RUNNING)) {
            continue;
        }
        ip = ((const struct sockaddr_in *)(const void *)i->ifa_addr)->sin_addr;
        found = 1;
    }
    if (ifs) freeifaddrs(ifs);
    if (!found && ifname)
        return mc_err(MC_ERR_INVALID_ARG,
                      "%s: MOONCAKE_SOCKET_IFNAME=%s: no such UP interface "
                      "with an IPv4 address",
                      who, ifname);
    if (!found) ip.s_addr = htonl(INADDR_LOOPBACK);
    *ip_p = ip;
    return MC_OK;
}

mc_status_t mc_sock_port_base(const char *who, int64_t *base_p)
{
    int64_t base = mc_env_int("MOONCAKE_SOCKET_PORT_BASE", 0);
    if (base < 0 || base > 65535)
        return mc_err(MC_ERR_INVALID_ARG,
                      "%s: MOONCAKE_SOCKET_PORT_BASE=%lld is not a port", who,
                      (long long)base);
    *base_p = base;
    return MC_OK;
}

int mc_sock_parse_addr(const char *s, size_t len, struct sockaddr_in *sa)
{
    char buf[INET_ADDRSTRLEN + 8];
    if (len >= sizeof(buf)) return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *colon = strrchr(buf, ':');
    if (!colon) return -1;
    *colon = '\0';
    char *end;
    errno = 0;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || port == 0 || port > 65535)
        return -1;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, buf, &sa->sin_addr) == 1 ? 0 : -1;
}

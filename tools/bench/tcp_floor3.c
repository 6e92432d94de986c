/*
 * mooncake-tcp-floor3: what 3 processes over loopback TCP pay, on raw
 * sockets with no engine, for the shapes a fault-tolerant 8 B allreduce
 * could take (docs/design.md, "Three ranks or more over TCP").
 *
 * Every shape starts with recursive doubling for 3 ranks, which is what the
 * engine runs without fault tolerance: rank 2 folds its input into rank 0,
 * ranks 0 and 1 exchange, rank 0 sends the result to rank 2 ("off"). Then:
 *  barrier  each rank sends 1 B to both others and waits for both (the
 *           engine's final barrier with fault tolerance on);
 *  acked    rank 1 also sends its result to rank 2, and ranks 0 and 1 return
 *           only once the kernel reports their bytes to both peers
 *           acknowledged (SIOCOUTQ 0; each receiver asks for an immediate
 *           ACK with TCP_QUICKACK); rank 2 waits for both copies. Every rank
 *           then returns only once every rank's kernel holds what it needs
 *           to finish the op: guarantee 2 with no barrier;
 *  held     ranks 0 and 1 wait only for their own sends' acknowledgements
 *           (the healthy path of "retain and forward", which gives up a
 *           re-run when two ranks die inside one op).
 * Receives poll (MSG_DONTWAIT) and yield, as the engine's waits do with
 * more processes than cores. Prints microseconds per op, rank 0's clock,
 * best of --reps runs of --iters ops per shape, shapes alternating, and the
 * ratio of each to "off".
 *
 * usage: mooncake-tcp-floor3 [iters [reps]]   (default 20000 3)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { SH_OFF, SH_BARRIER, SH_ACKED, SH_HELD, SH_N };
static const char *sh_name[SH_N] = {"off", "barrier", "acked", "held"};

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static void die(const char *what)
{
    perror(what);
    _exit(2);
}

static void send_all(int fd, const void *b, size_t n)
{
    while (n) {
        ssize_t k = send(fd, b, n, 0);
        if (k <= 0) die("send");
        b = (const char *)b + k;
        n -= (size_t)k;
    }
}

static void recv_all(int fd, void *b, size_t n, int quickack)
{
    while (n) {
        ssize_t k = recv(fd, b, n, MSG_DONTWAIT);
        if (k < 0 && (errno == EAGAIN || errno == EINTR)) {
            sched_yield();
            continue;
        }
        if (k <= 0) die("recv");
        b = (char *)b + k;
        n -= (size_t)k;
    }
    int one = 1;
    if (quickack)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

/* until the peer's kernel acknowledged every byte written to fd */
static void wait_acked(int fd)
{
    for (;;) {
        int q = 0;
        if (ioctl(fd, SIOCOUTQ, &q) != 0) die("SIOCOUTQ");
        if (q == 0) return;
        sched_yield();
    }
}

/* One rank's loop; fd[p] is its socket to rank p. Returns us per op. */
static double run(int me, const int fd[3], int shape, int iters)
{
    int qa = shape == SH_ACKED || shape == SH_HELD;
    double x = me + 1, res = 0, t0 = 0;
    char b = 1, bb;
    int warm = iters / 10;
    for (int it = 0; it < warm + iters; it++) {
        if (it == warm) t0 = now_us();
        if (me == 2) {
            send_all(fd[0], &x, 8);
            recv_all(fd[0], &res, 8, qa);
            if (shape == SH_ACKED) {
                double copy;
                recv_all(fd[1], &copy, 8, qa);
                if (copy != res) _exit(3);
            }
        } else if (me == 0) {
            double y, q;
            recv_all(fd[2], &y, 8, qa);
            double p = x + y;
            send_all(fd[1], &p, 8);
            recv_all(fd[1], &q, 8, qa);
            res = p + q;
            send_all(fd[2], &res, 8);
            if (qa) {
                wait_acked(fd[1]);
                wait_acked(fd[2]);
            }
        } else {
            double q;
            send_all(fd[0], &x, 8);
            recv_all(fd[0], &q, 8, qa);
            res = x + q;
            if (shape == SH_ACKED) {
                send_all(fd[2], &res, 8);
                wait_acked(fd[2]);
            }
            if (qa) wait_acked(fd[0]);
        }
        if (shape == SH_BARRIER) {
            for (int p = 0; p < 3; p++)
                if (p != me) send_all(fd[p], &b, 1);
            for (int p = 0; p < 3; p++)
                if (p != me) recv_all(fd[p], &bb, 1, 0);
        }
        if (res != 6) {
            fprintf(stderr, "rank %d: result %g, want 6\n", me, res);
            _exit(3);
        }
    }
    return (now_us() - t0) / iters;
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 20000;
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    if (iters < 10 || reps < 1) {
        fprintf(stderr, "usage: mooncake-tcp-floor3 [iters >= 10 [reps]]\n");
        return 2;
    }
    int one = 1, lfd[3], port[3];
    for (int r = 0; r < 3; r++) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t l = sizeof(a);
        lfd[r] = socket(AF_INET, SOCK_STREAM, 0);
        if (lfd[r] < 0 || bind(lfd[r], (void *)&a, sizeof(a)) ||
            getsockname(lfd[r], (void *)&a, &l) || listen(lfd[r], 8))
            die("listen");
        port[r] = ntohs(a.sin_port);
    }
    int res_pipe[2];
    if (pipe(res_pipe)) die("pipe");
    pid_t pid[3];
    for (int me = 0; me < 3; me++) {
        pid[me] = fork();
        if (pid[me] < 0) die("fork");
        if (pid[me]) continue;
        int fd[3] = {-1, -1, -1};
        for (int p = 0; p < me; p++) { /* connect to lower ranks */
            struct sockaddr_in a = {.sin_family = AF_INET,
                                    .sin_port = htons((uint16_t)port[p])};
            a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (s < 0 || connect(s, (void *)&a, sizeof(a))) die("connect");
            send_all(s, &me, sizeof(me));
            fd[p] = s;
        }
        for (int k = me + 1; k < 3; k++) { /* accept the higher ones */
            int s = accept(lfd[me], NULL, NULL), who = -1;
            if (s < 0) die("accept");
            recv_all(s, &who, sizeof(who), 0);
            if (who <= me || who > 2) _exit(3);
            fd[who] = s;
        }
        for (int p = 0; p < 3; p++)
            if (p != me)
                setsockopt(fd[p], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        double best[SH_N];
        for (int s = 0; s < SH_N; s++)
            best[s] = 1e30;
        for (int rep = 0; rep < reps; rep++)
            for (int s = 0; s < SH_N; s++) {
                double us = run(me, fd, s, iters);
                if (us < best[s]) best[s] = us;
            }
        if (me == 0 &&
            write(res_pipe[1], best, sizeof(best)) != (ssize_t)sizeof(best))
            die("write");
        _exit(0);
    }
    double best[SH_N];
    ssize_t got = read(res_pipe[0], best, sizeof(best));
    int bad = got != (ssize_t)sizeof(best);
    for (int me = 0; me < 3; me++) {
        int ws = 0;
        waitpid(pid[me], &ws, 0);
        bad |= !WIFEXITED(ws) || WEXITSTATUS(ws);
    }
    if (bad) {
        fprintf(stderr, "mooncake-tcp-floor3: a rank failed\n");
        return 1;
    }
    printf("# 3 processes, loopback TCP, 8 B allreduce shapes, best of %d runs "
           "of %d ops\n#   shape      us/op   off/shape\n",
           reps, iters);
    for (int s = 0; s < SH_N; s++)
        printf("  %-8s %9.2f %9.2f\n", sh_name[s], best[s],
               best[SH_OFF] / best[s]);
    return 0;
}

/* UDP load generator for bench/relay_vs_coturn.py (Linux, sendmmsg/recvmmsg, one thread).
 *
 * The bench sets up the sockets (TURN allocations, permissions, channels, or plain sockets
 * connected to a STUN server) and passes them in by number. This program sends pre-built
 * datagrams on the sending sockets, round robin, for --duration seconds, at --rate packets/s
 * spread evenly over time (0: as fast as it can), and counts what arrives on the receiving
 * sockets, then drains them for --drain seconds after the last send, and prints one JSON line.
 *
 *   udp_load --duration 3 --rate 40000 --seq-offset 4 --recv-seq-offset 0 \
 *            --send 3:4000a8... --send 4:4000a8... --recv 5 --recv 6
 *
 * --send FD:HEX   a connected socket and the datagram to send on it (hex).
 * --recv FD       a socket to count arrivals on (it may also be a sending socket).
 * --seq-offset N  the datagram carries the magic "CPLB" at byte N; the program writes a global
 *                 sequence number (u32, big endian) at N+4 of each datagram it sends.
 * --recv-seq-offset M  where the magic is in an arriving datagram: each arrival is then counted
 *                 once by its sequence number (duplicates apart), so loss is exact.
 * --warmup S      arrivals before S seconds into the run are not in the rate window.
 *
 * Output: sent, send_seconds (so the achieved send rate is sent / send_seconds), send errors
 * (EAGAIN / ENOBUFS: not sent, not counted), received (all arrivals), unique (distinct sequence
 * numbers), duplicates, other (arrivals without the magic), window_received and window_seconds
 * (arrivals from --warmup to the end of sending: the delivered rate).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 4096
#define BATCH 32
#define RECV_BATCH 64
#define RECV_SIZE 2048
#define MAX_LEN 1500

struct sender {
    int fd;
    unsigned char *tmpl;
    size_t len;
};

static struct sender senders[MAX_FDS];
static int nsend;
static int recv_fds[MAX_FDS];
static int nrecv;
static int seq_offset = -1, recv_seq_offset = -1;
static double duration = 3.0, rate = 0.0, warmup = 0.5, drain = 0.5;

static uint64_t received, unique_seen, duplicates, other, window_received;
static unsigned char *bitmap;
static size_t bitmap_bytes;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what) {
    fprintf(stderr, "udp_load: %s: %s\n", what, strerror(errno));
    exit(2);
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void add_sender(const char *spec) {
    char *colon = strchr(spec, ':');
    if (colon == NULL || nsend >= MAX_FDS) {
        fprintf(stderr, "udp_load: bad --send %s\n", spec);
        exit(2);
    }
    size_t hexlen = strlen(colon + 1);
    if (hexlen % 2 || hexlen / 2 > MAX_LEN || hexlen == 0) {
        fprintf(stderr, "udp_load: bad datagram in --send\n");
        exit(2);
    }
    struct sender *s = &senders[nsend++];
    s->fd = atoi(spec);
    s->len = hexlen / 2;
    s->tmpl = malloc(s->len);
    for (size_t i = 0; i < s->len; i++) {
        int hi = hexval(colon[1 + 2 * i]), lo = hexval(colon[2 + 2 * i]);
        if (hi < 0 || lo < 0) {
            fprintf(stderr, "udp_load: bad hex in --send\n");
            exit(2);
        }
        s->tmpl[i] = (unsigned char)(hi << 4 | lo);
    }
    if (seq_offset >= 0 && (size_t)seq_offset + 8 > s->len) {
        fprintf(stderr, "udp_load: datagram too short for --seq-offset\n");
        exit(2);
    }
}

static void set_nonblocking(int fd) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) die("fcntl");
}

static void count_seq(uint32_t seq) {
    size_t byte = seq >> 3;
    if (byte >= bitmap_bytes) {
        size_t grown = bitmap_bytes ? bitmap_bytes : 65536;
        while (grown <= byte) grown *= 2;
        bitmap = realloc(bitmap, grown);
        if (bitmap == NULL) die("realloc");
        memset(bitmap + bitmap_bytes, 0, grown - bitmap_bytes);
        bitmap_bytes = grown;
    }
    unsigned char bit = (unsigned char)(1u << (seq & 7));
    if (bitmap[byte] & bit) {
        duplicates++;
    } else {
        bitmap[byte] |= bit;
        unique_seen++;
    }
}

static struct mmsghdr rmsgs[RECV_BATCH];
static struct iovec riov[RECV_BATCH];
static unsigned char rbufs[RECV_BATCH][RECV_SIZE];

/* Read every datagram waiting on `fd`; `in_window`: they count towards the delivered rate. */
static void drain_fd(int fd, int in_window) {
    for (;;) {
        for (int i = 0; i < RECV_BATCH; i++) {
            riov[i].iov_base = rbufs[i];
            riov[i].iov_len = RECV_SIZE;
            memset(&rmsgs[i].msg_hdr, 0, sizeof rmsgs[i].msg_hdr);
            rmsgs[i].msg_hdr.msg_iov = &riov[i];
            rmsgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(fd, rmsgs, RECV_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR || errno == ECONNREFUSED) continue;
            die("recvmmsg");
        }
        received += (uint64_t)n;
        if (in_window) window_received += (uint64_t)n;
        for (int i = 0; i < n; i++) {
            unsigned len = rmsgs[i].msg_len;
            const unsigned char *p = rbufs[i];
            if (recv_seq_offset >= 0 && len >= (unsigned)recv_seq_offset + 8 &&
                memcmp(p + recv_seq_offset, "CPLB", 4) == 0) {
                const unsigned char *q = p + recv_seq_offset + 4;
                count_seq((uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 |
                          q[3]);
            } else {
                other++;
            }
        }
        if (n < RECV_BATCH) return;
    }
}

static void poll_receivers(int ep, int timeout_ms, int in_window) {
    struct epoll_event evs[64];
    int n = epoll_wait(ep, evs, 64, timeout_ms);
    if (n < 0) {
        if (errno == EINTR) return;
        die("epoll_wait");
    }
    for (int i = 0; i < n; i++) drain_fd(evs[i].data.fd, in_window);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) {
            fprintf(stderr, "udp_load: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--rate")) rate = atof(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--drain")) drain = atof(v);
        else if (!strcmp(a, "--seq-offset")) seq_offset = atoi(v);
        else if (!strcmp(a, "--recv-seq-offset")) recv_seq_offset = atoi(v);
        else if (!strcmp(a, "--send")) add_sender(v);
        else if (!strcmp(a, "--recv")) {
            if (nrecv >= MAX_FDS) return 2;
            recv_fds[nrecv++] = atoi(v);
        } else {
            fprintf(stderr, "udp_load: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (nsend == 0) {
        fprintf(stderr, "udp_load: nothing to send (--send FD:HEX)\n");
        return 2;
    }
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    for (int i = 0; i < nsend; i++) set_nonblocking(senders[i].fd);
    for (int i = 0; i < nrecv; i++) {
        set_nonblocking(recv_fds[i]);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = recv_fds[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, recv_fds[i], &ev) < 0) die("epoll_ctl");
    }

    static unsigned char bufs[BATCH][MAX_LEN];
    static struct iovec iov[BATCH];
    static struct mmsghdr msgs[BATCH];
    /* Paced: small chunks, so the packets are spread over time and over the sockets. */
    int chunk_max = rate > 0 ? 4 : BATCH;
    uint64_t sent = 0, send_errors = 0, seq = 0;
    int cur = 0;
    double t0 = now_s(), end = t0 + duration, t = t0;
    while (t < end) {
        uint64_t due = rate > 0 ? (uint64_t)((t - t0) * rate) : sent + (uint64_t)chunk_max;
        if (due > sent) {
            struct sender *s = &senders[cur];
            int n = due - sent > (uint64_t)chunk_max ? chunk_max : (int)(due - sent);
            for (int i = 0; i < n; i++) {
                memcpy(bufs[i], s->tmpl, s->len);
                if (seq_offset >= 0) {
                    uint32_t q = (uint32_t)(seq + (uint64_t)i);
                    unsigned char *p = bufs[i] + seq_offset + 4;
                    p[0] = (unsigned char)(q >> 24);
                    p[1] = (unsigned char)(q >> 16);
                    p[2] = (unsigned char)(q >> 8);
                    p[3] = (unsigned char)q;
                }
                iov[i].iov_base = bufs[i];
                iov[i].iov_len = s->len;
                memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            int got = sendmmsg(s->fd, msgs, (unsigned)n, MSG_DONTWAIT);
            if (got < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS &&
                    errno != ECONNREFUSED && errno != EINTR)
                    die("sendmmsg");
                send_errors++;
                got = 0;
            }
            sent += (uint64_t)got;
            seq += (uint64_t)got;
            if (rate > 0 && got < n) {
                /* Behind: what the socket would not take now is not owed later in a burst. */
                if (due - sent > (uint64_t)chunk_max * 8) sent = due - (uint64_t)chunk_max * 8;
            }
            cur = (cur + 1) % nsend;
        }
        if (nrecv) poll_receivers(ep, 0, t - t0 >= warmup);
        t = now_s();
    }
    double send_end = t;
    /* The sequence numbers skipped when behind were never sent: count what went out. */
    uint64_t really_sent = seq;
    double drain_end = send_end + drain;
    while (nrecv && (t = now_s()) < drain_end) {
        int left_ms = (int)((drain_end - t) * 1000) + 1;
        poll_receivers(ep, left_ms > 20 ? 20 : left_ms, 0);
    }
    double window = send_end - t0 - warmup;
    printf("{\"sent\": %llu, \"send_seconds\": %.6f, \"send_errors\": %llu, \"received\": %llu, "
           "\"unique\": %llu, \"duplicates\": %llu, \"other\": %llu, \"window_received\": %llu, "
           "\"window_seconds\": %.6f, \"offered_rate\": %.1f, \"senders\": %d, "
           "\"receivers\": %d}\n",
           (unsigned long long)really_sent, send_end - t0, (unsigned long long)send_errors,
           (unsigned long long)received, (unsigned long long)unique_seen,
           (unsigned long long)duplicates, (unsigned long long)other,
           (unsigned long long)window_received, window > 0 ? window : 0.0, rate, nsend, nrecv);
    return 0;
}

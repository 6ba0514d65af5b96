/* The relay's established channels forwarded in batches (RFC 8656 §12 ChannelData), in C.
 *
 * CPython pays about 1.7 us per recvfrom and 4.3 us per sendto of one datagram on this kind of
 * machine, most of it call overhead around a kernel that needs 1 + 3 us; the rest of a relayed
 * datagram's Python costs 1.7 us more. So a CPython relay cannot reach coturn per core however
 * little it does per datagram. This module does for the routes the full rules have learned
 * (rendezvous/channel_routes.py) what rendezvous/fast_path.py does, with one recvmmsg per 64
 * datagrams, a look-up in a keyed open-addressing table, and one sendmmsg per run of datagrams
 * leaving by the same socket. What it holds no live route for is handed back to Python as
 * (bytes, address) pairs, exactly as socket.recvfrom would give them, for the full rules.
 *
 * Two tables. Client side: key (client address as the main socket sees it, channel), value
 * (socket, peer, -1: strip the 4-byte header) or, for a channel between two allocations of this
 * relay, (main socket, the other client, its channel: rewrite the header). Peer side: key (peer
 * address, the relayed socket it arrived on), value (main socket, client, channel: add the
 * header). Nothing here decides what is allowed; an entry exists only while Python says the
 * route lives, and each carries its expiry, checked per datagram against the caller's clock.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64
#define HEADROOM 4          /* room to add a ChannelData header before a peer's datagram */
#define SLOT (HEADROOM + 65536)
#define MAX_ENTRIES (1 << 22) /* far above any quota: a table never grows past this */

typedef struct {
    uint8_t addr[16];  /* IPv4 as its 4 bytes, or IPv6 (IPv4 on an IPv6 socket: ::ffff:a.b.c.d) */
    uint16_t port;     /* network order */
    uint16_t family;
    int32_t tag;       /* client side: the channel; peer side: the relayed socket */
} Key;

_Static_assert(sizeof(Key) == 24, "a key is hashed and compared as 24 bytes, no padding");

typedef union {
    struct sockaddr sa;
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
} SockAddr;

typedef struct {
    Key key;
    int used;
    int out_fd;
    int channel;  /* the header to send with, or -1 to send the data alone */
    socklen_t dest_len;
    double expires;
    SockAddr dest;
} Entry;

typedef struct {
    Entry *slots;
    size_t mask;  /* capacity - 1, capacity a power of two */
    size_t count;
} Table;

typedef struct {
    PyObject_HEAD
    Table tables[2];  /* 0: client side, 1: peer side */
    uint64_t seed;
    unsigned char *buffers;  /* BATCH slots of SLOT bytes */
    struct mmsghdr in[BATCH];
    struct iovec in_iov[BATCH];
    SockAddr names[BATCH];
    struct mmsghdr out[BATCH];
    struct iovec out_iov[BATCH];
    SockAddr out_names[BATCH];  /* copied: making a leftover may run Python, which may route */
    int busy;                   /* in drain: a finalizer run meanwhile must not drain again */
} Forwarder;

static uint64_t mix(uint64_t h, uint64_t w) {
    h ^= w;
    h *= 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 29);
}

/* Keyed by a per-process secret: nobody outside can aim datagrams at one probe chain. */
static size_t key_hash(const Forwarder *f, const Key *k) {
    uint64_t w[3];
    memcpy(w, k, sizeof w);
    return (size_t)mix(mix(mix(f->seed, w[0]), w[1]), w[2]);
}

static int key_from(Key *k, const SockAddr *a, int32_t tag) {
    memset(k, 0, sizeof *k);
    k->tag = tag;
    if (a->sa.sa_family == AF_INET) {
        memcpy(k->addr, &a->v4.sin_addr, 4);
        k->port = a->v4.sin_port;
    } else if (a->sa.sa_family == AF_INET6) {
        memcpy(k->addr, &a->v6.sin6_addr, 16);
        k->port = a->v6.sin6_port;
    } else {
        return -1;
    }
    k->family = a->sa.sa_family;
    return 0;
}

static Entry *find(const Forwarder *f, const Table *t, const Key *k) {
    if (t->slots == NULL)
        return NULL;
    for (size_t i = key_hash(f, k) & t->mask;; i = (i + 1) & t->mask) {
        Entry *e = &t->slots[i];
        if (!e->used)
            return NULL;
        if (memcmp(&e->key, k, sizeof *k) == 0)
            return e;
    }
}

static int grow(Forwarder *f, Table *t) {
    size_t capacity = t->slots == NULL ? 64 : (t->mask + 1) * 2;
    Entry *slots = PyMem_Calloc(capacity, sizeof(Entry));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; t->slots != NULL && i <= t->mask; i++) {
        if (!t->slots[i].used)
            continue;
        size_t j = key_hash(f, &t->slots[i].key) & (capacity - 1);
        while (slots[j].used)
            j = (j + 1) & (capacity - 1);
        slots[j] = t->slots[i];
    }
    PyMem_Free(t->slots);
    t->slots = slots;
    t->mask = capacity - 1;
    return 0;
}

static Entry *insert(Forwarder *f, Table *t, const Key *k) {
    Entry *e = find(f, t, k);
    if (e != NULL)
        return e;
    if (t->count >= MAX_ENTRIES) {
        PyErr_SetString(PyExc_OverflowError, "channel forwarder table full");
        return NULL;
    }
    if (t->slots == NULL || (t->count + 1) * 2 > t->mask + 1) {
        if (grow(f, t) < 0)
            return NULL;
    }
    size_t i = key_hash(f, k) & t->mask;
    while (t->slots[i].used)
        i = (i + 1) & t->mask;
    e = &t->slots[i];
    memset(e, 0, sizeof *e);
    e->key = *k;
    e->used = 1;
    t->count++;
    return e;
}

/* Linear probing's deletion: shift back every later entry of the run that may move. */
static void erase(Forwarder *f, Table *t, Entry *e) {
    size_t i = (size_t)(e - t->slots);
    t->slots[i].used = 0;
    t->count--;
    for (size_t j = (i + 1) & t->mask; t->slots[j].used; j = (j + 1) & t->mask) {
        size_t home = key_hash(f, &t->slots[j].key) & t->mask;
        /* j's entry may fill the hole at i unless its home lies cyclically in (i, j] */
        if (((j - home) & t->mask) >= ((j - i) & t->mask)) {
            t->slots[i] = t->slots[j];
            t->slots[j].used = 0;
            i = j;
        }
    }
}

static int socket_family(int fd) {
    int family = 0;
    socklen_t len = sizeof family;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &len) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return family;
}

/* (host, port, ...) as a socket of `family` names it: IPv4 on IPv6 as ::ffff:a.b.c.d */
static int address_from(PyObject *addr, int family, SockAddr *out, socklen_t *len) {
    const char *host;
    int port;
    if (!PyTuple_Check(addr) || PyTuple_GET_SIZE(addr) < 2) {
        PyErr_SetString(PyExc_TypeError, "an address is a (host, port) tuple");
        return -1;
    }
    host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(addr, 0));
    if (host == NULL)
        return -1;
    long wide = PyLong_AsLong(PyTuple_GET_ITEM(addr, 1));
    if (wide == -1 && PyErr_Occurred())
        return -1;
    port = (int)wide;
    if (wide < 0 || wide > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return -1;
    }
    memset(out, 0, sizeof *out);
    if (family == AF_INET) {
        out->v4.sin_family = AF_INET;
        out->v4.sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &out->v4.sin_addr) == 1) {
            *len = sizeof out->v4;
            return 0;
        }
    } else if (family == AF_INET6) {
        struct in_addr v4;
        out->v6.sin6_family = AF_INET6;
        out->v6.sin6_port = htons((uint16_t)port);
        *len = sizeof out->v6;
        if (inet_pton(AF_INET6, host, &out->v6.sin6_addr) == 1)
            return 0;
        if (inet_pton(AF_INET, host, &v4) == 1) {
            out->v6.sin6_addr.s6_addr[10] = 0xff;
            out->v6.sin6_addr.s6_addr[11] = 0xff;
            memcpy(&out->v6.sin6_addr.s6_addr[12], &v4, 4);
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, "%s is not an address for this socket", host);
    return -1;
}

static int route_key(PyObject *src, int in_fd, int side, int tag, Key *k) {
    SockAddr a;
    socklen_t len;
    int family = socket_family(in_fd);
    if (family < 0 || address_from(src, family, &a, &len) < 0)
        return -1;
    return key_from(k, &a, side == 0 ? tag : in_fd);
}

static int check_ready(const Forwarder *f) {
    if (f->buffers == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Forwarder not initialised");
        return -1;
    }
    return 0;
}

static int check_side(int side) {
    if (side != 0 && side != 1) {
        PyErr_SetString(PyExc_ValueError, "side is 0 (clients) or 1 (peers)");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(route_doc,
"route(side, in_fd, src, channel, out_fd, dest, out_channel, expires)\n\n"
"Forward what arrives on in_fd from src (side 0: ChannelData on `channel`; side 1: any\n"
"datagram) out of out_fd to dest, until `expires` on the caller's clock: side 0 with\n"
"out_channel -1 sends the data alone, otherwise under out_channel's header.");

static PyObject *Forwarder_route(Forwarder *f, PyObject *args) {
    int side, in_fd, channel, out_fd, out_channel;
    PyObject *src, *dest;
    double expires;
    Key k;
    SockAddr d;
    socklen_t d_len;
    if (!PyArg_ParseTuple(args, "iiOiiOid", &side, &in_fd, &src, &channel, &out_fd, &dest,
                          &out_channel, &expires))
        return NULL;
    if (check_ready(f) < 0 || check_side(side) < 0)
        return NULL;
    if (side == 0 && (channel < 0x4000 || channel > 0x7FFF)) {  /* RFC 5766's range: all */
        PyErr_SetString(PyExc_ValueError, "a channel is 0x4000-0x7FFF");
        return NULL;
    }
    if (route_key(src, in_fd, side, channel, &k) < 0)
        return NULL;
    int out_family = socket_family(out_fd);
    if (out_family < 0 || address_from(dest, out_family, &d, &d_len) < 0)
        return NULL;
    if (out_channel < -1 || out_channel > 0xFFFF || (side == 1 && out_channel < 0)) {
        PyErr_SetString(PyExc_ValueError, "bad out_channel");
        return NULL;
    }
    Entry *e = insert(f, &f->tables[side], &k);
    if (e == NULL)
        return NULL;
    e->out_fd = out_fd;
    e->channel = out_channel;
    e->dest = d;
    e->dest_len = d_len;
    e->expires = expires;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(unroute_doc,
"unroute(side, in_fd, src, channel) -> bool\n\nForget a route; False when there was none.");

static PyObject *Forwarder_unroute(Forwarder *f, PyObject *args) {
    int side, in_fd, channel;
    PyObject *src;
    Key k;
    if (!PyArg_ParseTuple(args, "iiOi", &side, &in_fd, &src, &channel))
        return NULL;
    if (check_side(side) < 0 || route_key(src, in_fd, side, channel, &k) < 0)
        return NULL;
    Entry *e = find(f, &f->tables[side], &k);
    if (e == NULL)
        Py_RETURN_FALSE;
    erase(f, &f->tables[side], e);
    Py_RETURN_TRUE;
}

/* The address as socket.recvfrom gives it: (host, port) or (host, port, flowinfo, scope_id) */
static PyObject *address_tuple(const SockAddr *a) {
    char host[NI_MAXHOST];
    if (a->sa.sa_family == AF_INET) {
        if (inet_ntop(AF_INET, &a->v4.sin_addr, host, sizeof host) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(si)", host, ntohs(a->v4.sin_port));
    }
    if (a->sa.sa_family == AF_INET6) {
        /* as CPython: getnameinfo, so a link-local address carries its %scope */
        if (getnameinfo(&a->sa, sizeof a->v6, host, sizeof host, NULL, 0, NI_NUMERICHOST) != 0)
            return PyErr_Format(PyExc_OSError, "unprintable IPv6 address");
        return Py_BuildValue("(siII)", host, ntohs(a->v6.sin6_port),
                             (unsigned int)ntohl(a->v6.sin6_flowinfo),
                             (unsigned int)a->v6.sin6_scope_id);
    }
    return PyErr_Format(PyExc_OSError, "address family %d", a->sa.sa_family);
}

/* Send the queued datagrams, each run of one socket in one sendmmsg; a datagram the kernel
 * refuses (a peer's ICMP unreachable, a full buffer) is dropped, as UDP would. */
static void flush(Forwarder *f, int *fds, int queued) {
    int start = 0;
    while (start < queued) {
        int end = start + 1;
        while (end < queued && fds[end] == fds[start])
            end++;
        int at = start;
        while (at < end) {
            int sent = sendmmsg(fds[start], &f->out[at], (unsigned int)(end - at), MSG_DONTWAIT);
            if (sent < 0) {
                if (errno == EINTR)
                    continue;
                at++;  /* the one the kernel refused */
            } else {
                at += sent;
            }
        }
        start = end;
    }
}

PyDoc_STRVAR(drain_doc,
"drain(side, fd, now, limit, most_rest) -> (alone, headed, errors, dry, rest)\n\n"
"Read fd until it would block, `limit` datagrams, or a batch that brings the rest to\n"
"most_rest: forward those with a live route, and return how many went out as data alone and\n"
"with a header, how many reads failed, whether fd was read dry, and the rest as a list of\n"
"(data, address) pairs in arrival order, for the full rules.");

static PyObject *Forwarder_drain(Forwarder *f, PyObject *args) {
    int side, fd, limit, most_rest, dry = 0;
    double now;
    long alone = 0, headed = 0, errors = 0;
    int fds[BATCH];
    if (!PyArg_ParseTuple(args, "iidii", &side, &fd, &now, &limit, &most_rest))
        return NULL;
    if (check_ready(f) < 0 || check_side(side) < 0)
        return NULL;
    if (f->busy) {
        PyErr_SetString(PyExc_RuntimeError, "drain is not reentrant");
        return NULL;
    }
    PyObject *leftovers = PyList_New(0);
    if (leftovers == NULL)
        return NULL;
    f->busy = 1;
    Table *t = &f->tables[side];
    int done = 0;
    while (done < limit) {
        unsigned int want = (unsigned int)(limit - done < BATCH ? limit - done : BATCH);
        for (unsigned int i = 0; i < want; i++) {
            f->in[i].msg_hdr.msg_namelen = sizeof(SockAddr);
            f->in[i].msg_hdr.msg_flags = 0;
        }
        int got = recvmmsg(fd, f->in, want, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                dry = 1;
                break;
            }
            if (errno == EINTR)
                continue;
            if (errno == EBADF || errno == ENOTSOCK) {
                f->busy = 0;
                Py_DECREF(leftovers);
                return PyErr_SetFromErrno(PyExc_OSError);
            }
            errors++;  /* a queued error (ICMP with IP_RECVERR), ENOBUFS: the next wake-up */
            break;
        }
        int queued = 0, barrier = 0;
        for (int i = 0; i < got; i++) {
            unsigned char *data = f->buffers + (size_t)i * SLOT + HEADROOM;
            unsigned int len = f->in[i].msg_len;
            const SockAddr *from = &f->names[i];
            Key k;
            Entry *e = NULL;
            unsigned int body = 0;
            if (barrier || (f->in[i].msg_hdr.msg_flags & MSG_TRUNC) || len > 0xFFFF) {
                /* after a Refresh, in order; or not whole: Python's, as read */
            } else if (side == 0) {
                if (len >= 4 && data[0] >= 0x40 && data[0] <= 0x7F &&
                    key_from(&k, from, (data[0] << 8) | data[1]) == 0) {
                    body = (unsigned int)((data[2] << 8) | data[3]);
                    e = find(f, t, &k);
                    if (e != NULL && (!(e->expires > now) || 4 + body > len))
                        e = NULL;
                } else if (len >= 2 && data[0] == 0x00 && data[1] == 0x04) {
                    /* A Refresh request may end this client's allocation and its routes (and
                     * routes into it): what came after it waits for the full rules to see it. */
                    barrier = 1;
                }
            } else if (key_from(&k, from, fd) == 0) {
                e = find(f, t, &k);
                if (e != NULL && !(e->expires > now))
                    e = NULL;
            }
            if (e == NULL) {
                PyObject *addr = address_tuple(from);
                if (addr == NULL) {  /* a family no UDP socket gives: counted, not raised */
                    PyErr_Clear();
                    errors++;
                    continue;
                }
                PyObject *bytes = PyBytes_FromStringAndSize((char *)data, len);
                PyObject *pair = bytes ? PyTuple_Pack(2, bytes, addr) : NULL;
                Py_XDECREF(bytes);
                Py_XDECREF(addr);
                if (pair == NULL || PyList_Append(leftovers, pair) < 0) {
                    Py_XDECREF(pair);
                    flush(f, fds, queued);
                    f->busy = 0;
                    Py_DECREF(leftovers);
                    return NULL;
                }
                Py_DECREF(pair);
                continue;
            }
            unsigned char *start;
            size_t size;
            if (side == 1) {  /* the peer's datagram under the client's channel header */
                start = data - 4;
                start[0] = (unsigned char)(e->channel >> 8);
                start[1] = (unsigned char)e->channel;
                start[2] = (unsigned char)(len >> 8);
                start[3] = (unsigned char)len;
                size = len + 4;
                headed++;
            } else if (e->channel < 0) {  /* to the peer: the data alone */
                start = data + 4;
                size = body;
                alone++;
            } else {  /* to another allocation's client: its own channel, padding dropped */
                start = data;
                start[0] = (unsigned char)(e->channel >> 8);
                start[1] = (unsigned char)e->channel;
                size = 4 + body;
                headed++;
            }
            f->out_iov[queued].iov_base = start;
            f->out_iov[queued].iov_len = size;
            f->out_names[queued] = e->dest;
            f->out[queued].msg_hdr.msg_name = &f->out_names[queued];
            f->out[queued].msg_hdr.msg_namelen = e->dest_len;
            fds[queued] = e->out_fd;
            queued++;
        }
        flush(f, fds, queued);
        done += got;
        if ((unsigned int)got < want) {
            dry = 1;  /* short: nothing left (or an error, which the next wake-up reads) */
            break;
        }
        if (barrier || PyList_GET_SIZE(leftovers) >= most_rest)
            break;  /* a Refresh to apply first; or the full rules' share of this wake-up */
    }
    f->busy = 0;
    return Py_BuildValue("(lllON)", alone, headed, errors, dry ? Py_True : Py_False, leftovers);
}

PyDoc_STRVAR(forget_doc,
"forget(fd) -> int\n\nDrop every route that reads or sends by fd, before it is closed and its\n"
"number given to another socket; how many went.");

static PyObject *Forwarder_forget(Forwarder *f, PyObject *arg) {
    long fd = PyLong_AsLong(arg);
    size_t gone = 0;
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    for (int side = 0; side < 2; side++) {
        Table *t = &f->tables[side];
        /* erase shifts later entries back into slot i: look at it again before moving on */
        for (size_t i = 0; t->slots != NULL && i <= t->mask;) {
            Entry *e = &t->slots[i];
            if (e->used && (e->out_fd == fd || (side == 1 && e->key.tag == fd))) {
                erase(f, t, e);
                gone++;
            } else {
                i++;
            }
        }
    }
    return PyLong_FromSize_t(gone);
}

PyDoc_STRVAR(routes_doc, "routes(side) -> int\n\nHow many routes the side holds.");

static PyObject *Forwarder_routes(Forwarder *f, PyObject *arg) {
    long side = PyLong_AsLong(arg);
    if (side == -1 && PyErr_Occurred())
        return NULL;
    if (side != 0 && side != 1)
        return PyErr_Format(PyExc_ValueError, "side is 0 (clients) or 1 (peers)");
    return PyLong_FromSize_t(f->tables[side].count);
}

static int Forwarder_init(Forwarder *f, PyObject *args, PyObject *kwds) {
    static char *keywords[] = {"seed", NULL};
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "K", keywords, &seed))
        return -1;
    if (f->buffers != NULL) {  /* a new seed would lose every entry in its table */
        PyErr_SetString(PyExc_RuntimeError, "a Forwarder is initialised once");
        return -1;
    }
    f->seed = (uint64_t)seed | 1;
    /* 4 MiB of address space; the kernel backs only the pages datagrams are written to */
    f->buffers = PyMem_RawMalloc((size_t)BATCH * SLOT);
    if (f->buffers == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < BATCH; i++) {
        f->in_iov[i].iov_base = f->buffers + (size_t)i * SLOT + HEADROOM;
        f->in_iov[i].iov_len = SLOT - HEADROOM;
        memset(&f->in[i], 0, sizeof f->in[i]);
        f->in[i].msg_hdr.msg_name = &f->names[i];
        f->in[i].msg_hdr.msg_iov = &f->in_iov[i];
        f->in[i].msg_hdr.msg_iovlen = 1;
        memset(&f->out[i], 0, sizeof f->out[i]);
        f->out[i].msg_hdr.msg_iov = &f->out_iov[i];
        f->out[i].msg_hdr.msg_iovlen = 1;
    }
    return 0;
}

static void Forwarder_dealloc(Forwarder *f) {
    PyMem_Free(f->tables[0].slots);
    PyMem_Free(f->tables[1].slots);
    PyMem_RawFree(f->buffers);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyMethodDef Forwarder_methods[] = {
    {"route", (PyCFunction)Forwarder_route, METH_VARARGS, route_doc},
    {"unroute", (PyCFunction)Forwarder_unroute, METH_VARARGS, unroute_doc},
    {"drain", (PyCFunction)Forwarder_drain, METH_VARARGS, drain_doc},
    {"forget", (PyCFunction)Forwarder_forget, METH_O, forget_doc},
    {"routes", (PyCFunction)Forwarder_routes, METH_O, routes_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ForwarderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "rendezvous._channel_forward.Forwarder",
    .tp_doc = PyDoc_STR("Live channel routes, and the batched reads and sends that use them."),
    .tp_basicsize = sizeof(Forwarder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Forwarder_init,
    .tp_dealloc = (destructor)Forwarder_dealloc,
    .tp_methods = Forwarder_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rendezvous._channel_forward",
    .m_doc = "The relay's live channel routes forwarded in batches (RFC 8656 section 12).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__channel_forward(void) {
    if (PyType_Ready(&ForwarderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&ForwarderType);
    if (PyModule_AddObject(m, "Forwarder", (PyObject *)&ForwarderType) < 0) {
        Py_DECREF(&ForwarderType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "BATCH", BATCH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

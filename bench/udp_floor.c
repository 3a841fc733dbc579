/* udp_floor: the kernel's cost of receiving UDP datagrams the way the relay's listener does,
 * with nothing else: no framing, no ring, no Python. What it takes per datagram is the floor
 * under the listener's CPU per datagram on this machine.
 *
 * usage: udp_floor PORT BATCH PER_EVENT NAP_US BUFFER IDLE_S [recvmmsg|io_uring]
 *
 *   PORT       the UDP port to bind on 127.0.0.1, with an 8 MiB receive buffer asked for as
 *              the listener asks (SO_RCVBUFFORCE, else SO_RCVBUF, capped by rmem_max)
 *   BATCH      datagrams per recvmmsg() call, each into its own BUFFER-byte buffer, with
 *              the sender's address (the listener: 64 buffers of DatagramReceiver.buffer_size)
 *   PER_EVENT  datagrams read per readiness event at most (the listener: UDP_READ_BATCH)
 *   NAP_US     pause after an event that emptied the socket (the listener: LISTENER_NAP)
 *   BUFFER     bytes per receive buffer
 *   IDLE_S     stop once no datagram came for this long, after the first one
 *   recvmmsg   (the default) the listener's way
 *   io_uring   one multishot IORING_OP_RECVMSG stays armed on the socket; the kernel receives
 *              each datagram into a buffer of a provided-buffer ring (header, the sender's
 *              address, then up to BUFFER bytes of payload) and posts a completion, so no
 *              msghdr is copied in or out per datagram; BATCH is unused. Same waiting: epoll
 *              on the socket, then io_uring_enter(GETEVENTS) runs the deferred receives
 *              (IORING_SETUP_DEFER_TASKRUN). Raw system calls, no liburing; Linux 6.0 or later.
 *
 * Prints {"bound": PORT} once bound, then at the end one JSON line: datagrams, events
 * (wake-ups), cpu_user and cpu_system (seconds, from the first datagram on) and
 * us_per_datagram. Built by bench/udp_floor.py with gcc -O2 at run time. */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PROVIDED_BUFFERS 1024  /* io_uring: a power of two */
#define CQ_ENTRIES 4096        /* more than PROVIDED_BUFFERS: completions never overflow */
#define BUFFER_GROUP 0

static double seconds_of(struct timeval t) { return (double)t.tv_sec + (double)t.tv_usec / 1e6; }

static void fail(const char *what) {
    perror(what);
    exit(1);
}

/* A way of receiving: drain() reads the datagrams already queued, `most` of them or about
 * that many, adds the first byte of each to *checksum (as framing would read it), and
 * returns how many it read; fewer than `most` means the socket is empty. */
struct receiver {
    long (*drain)(struct receiver *self, long most, unsigned long *checksum);
    int fd;
};

/* --- recvmmsg ---------------------------------------------------------------------------- */

struct mmsg_receiver {
    struct receiver base;
    int batch;
    struct mmsghdr *headers;
    struct iovec *iovecs;
    struct sockaddr_in6 *names;
};

static long mmsg_drain(struct receiver *self, long most, unsigned long *checksum) {
    struct mmsg_receiver *r = (struct mmsg_receiver *)self;
    long read = 0;
    while (read < most) {
        for (int i = 0; i < r->batch; i++)
            r->headers[i].msg_hdr.msg_namelen = sizeof r->names[i];
        int received = recvmmsg(self->fd, r->headers, (unsigned)r->batch, MSG_DONTWAIT, NULL);
        if (received <= 0)
            break;
        for (int i = 0; i < received; i++)
            *checksum += (unsigned char)((char *)r->iovecs[i].iov_base)[0];
        read += received;
        if (received < r->batch)
            break;
    }
    return read;
}

static struct receiver *mmsg_open(int fd, int batch, long buffer) {
    struct mmsg_receiver *r = calloc(1, sizeof *r);
    char *buffers = malloc((size_t)batch * (size_t)buffer);
    r->headers = calloc((size_t)batch, sizeof *r->headers);
    r->iovecs = calloc((size_t)batch, sizeof *r->iovecs);
    r->names = calloc((size_t)batch, sizeof *r->names);
    if (!buffers || !r->headers || !r->iovecs || !r->names)
        fail("udp_floor: malloc");
    for (int i = 0; i < batch; i++) {
        r->iovecs[i].iov_base = buffers + (size_t)i * (size_t)buffer;
        r->iovecs[i].iov_len = (size_t)buffer;
        r->headers[i].msg_hdr.msg_iov = &r->iovecs[i];
        r->headers[i].msg_hdr.msg_iovlen = 1;
        r->headers[i].msg_hdr.msg_name = &r->names[i];
    }
    r->base = (struct receiver){mmsg_drain, fd};
    r->batch = batch;
    return &r->base;
}

/* --- io_uring ---------------------------------------------------------------------------- */

struct uring_receiver {
    struct receiver base;
    int ring;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    struct io_uring_buf_ring *provided;
    unsigned short provided_tail;
    char *memory;         /* PROVIDED_BUFFERS slots */
    size_t slot;          /* bytes per slot */
    size_t payload;       /* offset of the payload in a slot */
    struct msghdr template;  /* how much address and control room each slot has */
};

static int uring_enter(struct uring_receiver *r, unsigned submit, unsigned flags) {
    return (int)syscall(__NR_io_uring_enter, r->ring, submit, 0, flags, NULL, 0);
}

/* Arms (again) the multishot receive; it ends when the provided buffers run out. */
static void uring_arm(struct uring_receiver *r) {
    unsigned tail = *r->sq_tail, index = tail & *r->sq_mask;
    struct io_uring_sqe *sqe = &r->sqes[index];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_RECVMSG;
    sqe->fd = r->base.fd;
    sqe->addr = (unsigned long)&r->template;
    sqe->len = 1;
    sqe->ioprio = IORING_RECV_MULTISHOT;
    sqe->flags = IOSQE_BUFFER_SELECT;
    sqe->buf_group = BUFFER_GROUP;
    r->sq_array[index] = index;
    atomic_store_explicit((_Atomic unsigned *)r->sq_tail, tail + 1, memory_order_release);
    if (uring_enter(r, 1, 0) != 1)
        fail("udp_floor: io_uring_enter (arm)");
}

static void uring_provide(struct uring_receiver *r, unsigned short id) {
    struct io_uring_buf *entry = &r->provided->bufs[r->provided_tail & (PROVIDED_BUFFERS - 1)];
    entry->addr = (unsigned long)(r->memory + (size_t)id * r->slot);
    entry->len = (unsigned)r->slot;
    entry->bid = id;
    r->provided_tail++;
}

static long uring_drain(struct receiver *self, long most, unsigned long *checksum) {
    struct uring_receiver *r = (struct uring_receiver *)self;
    long read = 0;
    while (read < most) {
        uring_enter(r, 0, IORING_ENTER_GETEVENTS);  /* runs the deferred receives */
        unsigned head = *r->cq_head;
        unsigned tail = atomic_load_explicit((_Atomic unsigned *)r->cq_tail, memory_order_acquire);
        if (head == tail)
            break;
        int ended = 0;
        for (; head != tail; head++) {
            struct io_uring_cqe *cqe = &r->cqes[head & *r->cq_mask];
            if (cqe->res < 0 && cqe->res != -ENOBUFS) {
                fprintf(stderr, "udp_floor: receive: %s\n", strerror(-cqe->res));
                exit(1);
            }
            if (cqe->res >= 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
                unsigned short id = (unsigned short)(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
                *checksum += (unsigned char)r->memory[(size_t)id * r->slot + r->payload];
                read++;
                uring_provide(r, id);
            }
            ended |= !(cqe->flags & IORING_CQE_F_MORE);
        }
        atomic_store_explicit((_Atomic unsigned *)r->cq_head, head, memory_order_release);
        atomic_store_explicit((_Atomic unsigned short *)&r->provided->tail, r->provided_tail,
                              memory_order_release);
        if (ended)
            uring_arm(r);
    }
    return read;  /* may pass `most`: one pass takes every completion already posted */
}

static struct receiver *uring_open(int fd, long buffer) {
    struct uring_receiver *r = calloc(1, sizeof *r);
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER
                   | IORING_SETUP_DEFER_TASKRUN;
    params.cq_entries = CQ_ENTRIES;
    r->ring = (int)syscall(__NR_io_uring_setup, 4, &params);
    if (r->ring < 0)
        fail("udp_floor: io_uring_setup");
    size_t sq_size = params.sq_off.array + params.sq_entries * sizeof(unsigned);
    size_t cq_size = params.cq_off.cqes + params.cq_entries * sizeof(struct io_uring_cqe);
    /* IORING_FEAT_SINGLE_MMAP (Linux 5.4): one mapping holds both rings */
    char *rings = mmap(NULL, sq_size > cq_size ? sq_size : cq_size, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_POPULATE, r->ring, IORING_OFF_SQ_RING);
    r->sqes = mmap(NULL, params.sq_entries * sizeof(struct io_uring_sqe),
                   PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->ring, IORING_OFF_SQES);
    if (rings == MAP_FAILED || r->sqes == MAP_FAILED)
        fail("udp_floor: mmap of the io_uring");
    r->sq_tail = (unsigned *)(rings + params.sq_off.tail);
    r->sq_mask = (unsigned *)(rings + params.sq_off.ring_mask);
    r->sq_array = (unsigned *)(rings + params.sq_off.array);
    r->cq_head = (unsigned *)(rings + params.cq_off.head);
    r->cq_tail = (unsigned *)(rings + params.cq_off.tail);
    r->cq_mask = (unsigned *)(rings + params.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(rings + params.cq_off.cqes);

    r->template.msg_namelen = sizeof(struct sockaddr_in6);
    r->payload = sizeof(struct io_uring_recvmsg_out) + r->template.msg_namelen;
    r->slot = (r->payload + (size_t)buffer + 63) & ~(size_t)63;
    r->memory = malloc(PROVIDED_BUFFERS * r->slot);
    r->provided = mmap(NULL, PROVIDED_BUFFERS * sizeof(struct io_uring_buf),
                       PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (r->memory == NULL || r->provided == MAP_FAILED)
        fail("udp_floor: provided buffers");
    struct io_uring_buf_reg registration = {.ring_addr = (unsigned long)r->provided,
                                            .ring_entries = PROVIDED_BUFFERS,
                                            .bgid = BUFFER_GROUP};
    if (syscall(__NR_io_uring_register, r->ring, IORING_REGISTER_PBUF_RING, &registration, 1))
        fail("udp_floor: IORING_REGISTER_PBUF_RING");
    for (unsigned id = 0; id < PROVIDED_BUFFERS; id++)
        uring_provide(r, (unsigned short)id);
    atomic_store_explicit((_Atomic unsigned short *)&r->provided->tail, r->provided_tail,
                          memory_order_release);
    r->base = (struct receiver){uring_drain, fd};
    uring_arm(r);
    return &r->base;
}

/* --- the listener's loop ----------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (argc != 7 && argc != 8) {
        fprintf(stderr, "usage: udp_floor PORT BATCH PER_EVENT NAP_US BUFFER IDLE_S "
                        "[recvmmsg|io_uring]\n");
        return 2;
    }
    int port = atoi(argv[1]), batch = atoi(argv[2]), per_event = atoi(argv[3]);
    long nap_us = atol(argv[4]), buffer = atol(argv[5]);
    int idle_ms = (int)(atof(argv[6]) * 1000);
    const char *mode = argc == 8 ? argv[7] : "recvmmsg";
    int uring = strcmp(mode, "io_uring") == 0;
    if (port < 1 || port > 65535 || batch < 1 || batch > 1024 || per_event < batch
        || nap_us < 0 || nap_us > 999999 || buffer < 1 || idle_ms < 1
        || (!uring && strcmp(mode, "recvmmsg") != 0)) {
        fprintf(stderr, "udp_floor: bad argument\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int wanted = 8 << 20;  /* listeners.request_receive_buffer */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &wanted, sizeof wanted) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &wanted, sizeof wanted);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&address, sizeof address) != 0)
        fail("udp_floor: bind");
    struct receiver *receiver = uring ? uring_open(fd, buffer)
                                      : mmsg_open(fd, batch, buffer);
    int poller = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN};
    epoll_ctl(poller, EPOLL_CTL_ADD, fd, &event);
    printf("{\"bound\": %d}\n", port);
    fflush(stdout);

    long datagrams = 0, events = 0;
    unsigned long checksum = 0;
    struct rusage first, last;
    int started = 0;
    for (;;) {
        int ready = epoll_wait(poller, &event, 1, started ? idle_ms : 600000);
        if (ready <= 0)
            break;  /* idle (or the 10-minute bound before the first datagram) */
        if (!started) {
            getrusage(RUSAGE_SELF, &first);
            started = 1;
        }
        events++;
        long read = receiver->drain(receiver, per_event, &checksum);
        datagrams += read;
        if (read < per_event && nap_us) {  /* the socket is empty: the listener's nap */
            struct timespec nap = {0, nap_us * 1000};
            nanosleep(&nap, NULL);
        }
    }
    if (!started) {
        fprintf(stderr, "udp_floor: no datagram arrived\n");
        return 1;
    }
    getrusage(RUSAGE_SELF, &last);  /* the idle wait at the end costs no CPU */
    double user = seconds_of(last.ru_utime) - seconds_of(first.ru_utime);
    double sys = seconds_of(last.ru_stime) - seconds_of(first.ru_stime);
    printf("{\"datagrams\": %ld, \"events\": %ld, \"cpu_user\": %.3f, \"cpu_system\": %.3f, "
           "\"us_per_datagram\": %.3f, \"checksum\": %lu}\n", datagrams, events, user, sys,
           (user + sys) * 1e6 / (double)datagrams, checksum);
    return 0;
}

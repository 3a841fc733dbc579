/* udp_floor_uring: udp_floor.c with io_uring instead of recvmmsg. One multishot RECVMSG
 * request stays armed on the socket; the kernel receives each datagram into a buffer of a
 * provided-buffer ring (header, the sender's address, the payload) and posts a completion,
 * so no msghdr is copied in or out per datagram. This measures whether that interface would
 * take a datagram below udp_floor's cost on this machine (bench/README.md).
 *
 * usage: udp_floor_uring PORT BATCH PER_EVENT NAP_US BUFFER IDLE_S
 *
 *   the arguments of udp_floor.c; BATCH is accepted and unused (the kernel fills one
 *   provided buffer per datagram, BUFFERS of them, each BUFFER bytes of payload plus the
 *   header and address).
 *
 * Waiting: epoll on the UDP socket, as the listener waits; on a wake-up, io_uring_enter with
 * GETEVENTS runs the deferred receives (IORING_SETUP_DEFER_TASKRUN) and the completions are
 * read from the shared ring until PER_EVENT datagrams or an empty queue. Raw system calls
 * and <linux/io_uring.h> only, no liburing. Needs Linux 6.0 or later (multishot RECVMSG). */

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

#define BUFFERS 1024       /* provided buffers (a power of two) */
#define CQ_ENTRIES 4096    /* more than BUFFERS, so completions never overflow */
#define BUFFER_GROUP 0

static double seconds_of(struct timeval t) { return (double)t.tv_sec + (double)t.tv_usec / 1e6; }

struct uring {
    int fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
};

static int uring_enter(struct uring *ring, unsigned submit, unsigned flags) {
    return (int)syscall(__NR_io_uring_enter, ring->fd, submit, 0, flags, NULL, 0);
}

static int uring_open(struct uring *ring) {
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER
                   | IORING_SETUP_DEFER_TASKRUN;
    params.cq_entries = CQ_ENTRIES;
    ring->fd = (int)syscall(__NR_io_uring_setup, 4, &params);
    if (ring->fd < 0)
        return -1;
    size_t sq_size = params.sq_off.array + params.sq_entries * sizeof(unsigned);
    size_t cq_size = params.cq_off.cqes + params.cq_entries * sizeof(struct io_uring_cqe);
    /* IORING_FEAT_SINGLE_MMAP (Linux 5.4): one mapping holds both rings */
    char *rings = mmap(NULL, sq_size > cq_size ? sq_size : cq_size, PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_POPULATE, ring->fd, IORING_OFF_SQ_RING);
    ring->sqes = mmap(NULL, params.sq_entries * sizeof(struct io_uring_sqe),
                      PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring->fd,
                      IORING_OFF_SQES);
    if (rings == MAP_FAILED || ring->sqes == MAP_FAILED)
        return -1;
    ring->sq_tail = (unsigned *)(rings + params.sq_off.tail);
    ring->sq_mask = (unsigned *)(rings + params.sq_off.ring_mask);
    ring->sq_array = (unsigned *)(rings + params.sq_off.array);
    ring->cq_head = (unsigned *)(rings + params.cq_off.head);
    ring->cq_tail = (unsigned *)(rings + params.cq_off.tail);
    ring->cq_mask = (unsigned *)(rings + params.cq_off.ring_mask);
    ring->cqes = (struct io_uring_cqe *)(rings + params.cq_off.cqes);
    return 0;
}

/* Arms (again) the multishot receive; it ends when the provided buffers run out. */
static int arm_receive(struct uring *ring, int socket_fd, struct msghdr *template) {
    unsigned tail = *ring->sq_tail, index = tail & *ring->sq_mask;
    struct io_uring_sqe *sqe = &ring->sqes[index];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_RECVMSG;
    sqe->fd = socket_fd;
    sqe->addr = (unsigned long)template;
    sqe->len = 1;
    sqe->ioprio = IORING_RECV_MULTISHOT;
    sqe->flags = IOSQE_BUFFER_SELECT;
    sqe->buf_group = BUFFER_GROUP;
    ring->sq_array[index] = index;
    atomic_store_explicit((_Atomic unsigned *)ring->sq_tail, tail + 1, memory_order_release);
    return uring_enter(ring, 1, 0) == 1 ? 0 : -1;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: udp_floor_uring PORT BATCH PER_EVENT NAP_US BUFFER IDLE_S\n");
        return 2;
    }
    int port = atoi(argv[1]), per_event = atoi(argv[3]);
    long nap_us = atol(argv[4]), buffer = atol(argv[5]);
    int idle_ms = (int)(atof(argv[6]) * 1000);
    if (port < 1 || port > 65535 || per_event < 1 || nap_us < 0 || nap_us > 999999
        || buffer < 1 || idle_ms < 1) {
        fprintf(stderr, "udp_floor_uring: bad argument\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int wanted = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &wanted, sizeof wanted);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        perror("udp_floor_uring: bind");
        return 1;
    }
    struct uring ring;
    if (uring_open(&ring) != 0) {
        perror("udp_floor_uring: io_uring_setup");
        return 1;
    }
    /* The provided buffers: each holds io_uring_recvmsg_out, the address, then the payload. */
    struct msghdr template;
    memset(&template, 0, sizeof template);
    template.msg_namelen = sizeof(struct sockaddr_in6);
    size_t payload_offset = sizeof(struct io_uring_recvmsg_out) + template.msg_namelen;
    size_t slot = (payload_offset + (size_t)buffer + 63) & ~(size_t)63;
    char *memory = malloc(BUFFERS * slot);
    struct io_uring_buf_ring *provided = mmap(NULL, BUFFERS * sizeof(struct io_uring_buf),
                                              PROT_READ | PROT_WRITE,
                                              MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (memory == NULL || provided == MAP_FAILED) {
        perror("udp_floor_uring: buffers");
        return 1;
    }
    struct io_uring_buf_reg registration = {.ring_addr = (unsigned long)provided,
                                            .ring_entries = BUFFERS, .bgid = BUFFER_GROUP};
    if (syscall(__NR_io_uring_register, ring.fd, IORING_REGISTER_PBUF_RING, &registration, 1)
        != 0) {
        perror("udp_floor_uring: IORING_REGISTER_PBUF_RING");
        return 1;
    }
    unsigned short provided_tail = 0;
    for (int id = 0; id < BUFFERS; id++, provided_tail++) {
        struct io_uring_buf *entry = &provided->bufs[provided_tail & (BUFFERS - 1)];
        entry->addr = (unsigned long)(memory + (size_t)id * slot);
        entry->len = (unsigned)slot;
        entry->bid = (unsigned short)id;
    }
    atomic_store_explicit((_Atomic unsigned short *)&provided->tail, provided_tail,
                          memory_order_release);
    if (arm_receive(&ring, fd, &template) != 0) {
        perror("udp_floor_uring: arm");
        return 1;
    }
    int poller = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN};
    epoll_ctl(poller, EPOLL_CTL_ADD, fd, &event);
    printf("{\"bound\": %d}\n", port);
    fflush(stdout);

    long datagrams = 0, events = 0, rearms = 0;
    unsigned long checksum = 0;  /* reads the first byte, as framing would */
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
        int drained = 0;
        for (long read = 0; read < per_event && !drained;) {
            uring_enter(&ring, 0, IORING_ENTER_GETEVENTS);  /* runs the deferred receives */
            unsigned head = *ring.cq_head;
            unsigned tail = atomic_load_explicit((_Atomic unsigned *)ring.cq_tail,
                                                 memory_order_acquire);
            drained = head == tail;
            int ended = 0;
            for (; head != tail; head++) {
                struct io_uring_cqe *cqe = &ring.cqes[head & *ring.cq_mask];
                if (cqe->res < 0 && cqe->res != -ENOBUFS) {
                    fprintf(stderr, "udp_floor_uring: receive: %s\n", strerror(-cqe->res));
                    return 1;
                }
                if (cqe->res >= 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
                    unsigned id = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
                    char *data = memory + (size_t)id * slot;
                    checksum += (unsigned char)data[payload_offset];
                    datagrams++;
                    read++;
                    struct io_uring_buf *entry = &provided->bufs[provided_tail & (BUFFERS - 1)];
                    entry->addr = (unsigned long)data;
                    entry->len = (unsigned)slot;
                    entry->bid = (unsigned short)id;
                    provided_tail++;
                }
                ended |= !(cqe->flags & IORING_CQE_F_MORE);
            }
            atomic_store_explicit((_Atomic unsigned *)ring.cq_head, head, memory_order_release);
            atomic_store_explicit((_Atomic unsigned short *)&provided->tail, provided_tail,
                                  memory_order_release);
            if (ended) {
                rearms++;
                if (arm_receive(&ring, fd, &template) != 0) {
                    perror("udp_floor_uring: arm");
                    return 1;
                }
            }
        }
        if (drained && nap_us) {
            struct timespec nap = {0, nap_us * 1000};
            nanosleep(&nap, NULL);
        }
    }
    if (!started) {
        fprintf(stderr, "udp_floor_uring: no datagram arrived\n");
        return 1;
    }
    getrusage(RUSAGE_SELF, &last);
    double user = seconds_of(last.ru_utime) - seconds_of(first.ru_utime);
    double sys = seconds_of(last.ru_stime) - seconds_of(first.ru_stime);
    printf("{\"datagrams\": %ld, \"events\": %ld, \"rearms\": %ld, \"cpu_user\": %.3f, "
           "\"cpu_system\": %.3f, \"us_per_datagram\": %.3f, \"checksum\": %lu}\n", datagrams,
           events, rearms, user, sys, (user + sys) * 1e6 / (double)datagrams, checksum);
    return 0;
}

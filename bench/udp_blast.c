/* udp_blast: sends pre-built datagrams to 127.0.0.1:PORT at a fixed rate, with sendmmsg().
 *
 * usage: udp_blast FILE PORT RATE BATCH PER_MESSAGE [SEGMENTS]
 *
 *   FILE         the datagrams, each a 4-byte little-endian length followed by its bytes
 *   PORT         the receiver's UDP port on 127.0.0.1
 *   RATE         datagrams per second (paced on CLOCK_MONOTONIC: batch k leaves at
 *                start + k * BATCH / RATE, or at once when the sender is behind)
 *   BATCH        datagrams per sendmmsg() call (1..1024)
 *   PER_MESSAGE  consecutive datagrams that make one message (1, or a GELF message's chunks):
 *                a message counts as sent when all of its datagrams were
 *   SEGMENTS     at most this many consecutive datagrams of one size go out in one send, as
 *                one UDP GSO buffer (UDP_SEGMENT, Linux 4.18) that the kernel cuts into the
 *                same datagrams: far less sender CPU per datagram. 1 (the default): no GSO.
 *                The receiver sees ordinary datagrams unless it asks for UDP_GRO.
 *
 * Prints one JSON line when done: datagrams, sent (messages), failed_datagrams, errors by
 * errno number (0: sendmmsg sent nothing without an error), started (wall clock, seconds since the epoch, at the first send) and seconds
 * (monotonic, first send to last). Built by bench/run.py with gcc -O2 at run time. */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1024
#define MAX_ERRNO 256
#define MAX_SEGMENTS 64     /* the kernel takes up to UDP_MAX_SEGMENTS (128 or more) */
#define MAX_GSO_BYTES 60000 /* below the 65,507 bytes of one UDP payload */
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

static double seconds_of(const struct timespec *t) {
    return (double)t->tv_sec + (double)t->tv_nsec / 1e9;
}

static long parse_long(const char *text, const char *what, long low, long high) {
    char *end = NULL;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < low || value > high) {
        fprintf(stderr, "udp_blast: bad %s %s (allowed %ld..%ld)\n", what, text, low, high);
        exit(2);
    }
    return value;
}

/* The datagrams in the mapped file, as iovecs pointing into it. */
static struct iovec *index_datagrams(const unsigned char *data, size_t size, size_t *count) {
    size_t capacity = 1024, n = 0, offset = 0;
    struct iovec *iov = malloc(capacity * sizeof *iov);
    while (iov != NULL && offset < size) {
        if (size - offset < 4) {
            fprintf(stderr, "udp_blast: truncated length at offset %zu\n", offset);
            exit(2);
        }
        uint32_t length = (uint32_t)data[offset] | (uint32_t)data[offset + 1] << 8 |
                          (uint32_t)data[offset + 2] << 16 | (uint32_t)data[offset + 3] << 24;
        offset += 4;
        if (length > size - offset) {
            fprintf(stderr, "udp_blast: truncated datagram at offset %zu\n", offset);
            exit(2);
        }
        if (n == capacity) {
            capacity *= 2;
            struct iovec *grown = realloc(iov, capacity * sizeof *iov);
            if (grown == NULL) {
                free(iov);
                iov = NULL;
                break;
            }
            iov = grown;
        }
        iov[n].iov_base = (void *)(data + offset);
        iov[n].iov_len = length;
        n++;
        offset += length;
    }
    if (iov == NULL) {
        fprintf(stderr, "udp_blast: out of memory\n");
        exit(2);
    }
    *count = n;
    return iov;
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: udp_blast FILE PORT RATE BATCH PER_MESSAGE [SEGMENTS]\n");
        return 2;
    }
    const char *path = argv[1];
    long port = parse_long(argv[2], "port", 1, 65535);
    long rate = parse_long(argv[3], "rate", 1, 1000000000L);
    long batch = parse_long(argv[4], "batch", 1, MAX_BATCH);
    long per_message = parse_long(argv[5], "per-message count", 1, 1 << 20);
    long segments = argc == 7 ? parse_long(argv[6], "segment count", 1, MAX_SEGMENTS) : 1;

    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "udp_blast: %s: %s\n", path, strerror(errno));
        return 2;
    }
    size_t size = (size_t)st.st_size;
    const unsigned char *data = NULL;
    if (size > 0) {  /* populated up front: no page faults while sending */
        data = mmap(NULL, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
        if (data == MAP_FAILED) {
            fprintf(stderr, "udp_blast: mmap %s: %s\n", path, strerror(errno));
            return 2;
        }
    }
    close(fd);
    size_t count = 0;
    struct iovec *iov = size ? index_datagrams(data, size, &count) : NULL;

    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (sock < 0 || connect(sock, (struct sockaddr *)&to, sizeof to) != 0) {
        fprintf(stderr, "udp_blast: socket: %s\n", strerror(errno));
        return 2;
    }
    prctl(PR_SET_TIMERSLACK, 1UL);  /* wake up on time, not up to 50 us late */

    static struct mmsghdr msgs[MAX_BATCH];
    static union {                         /* msgs[j]'s UDP_SEGMENT control message */
        char bytes[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control[MAX_BATCH];
    static unsigned long errors[MAX_ERRNO];
    unsigned long failed_datagrams = 0, failed_messages = 0;
    long last_failed_message = -1;
    struct timespec start, now, wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    clock_gettime(CLOCK_MONOTONIC, &start);
    double start_s = seconds_of(&start);

    for (size_t first = 0; first < count; first += (size_t)batch) {
        double due = start_s + (double)first / (double)rate;
        struct timespec when = {.tv_sec = (time_t)due,
                                .tv_nsec = (long)((due - (double)(time_t)due) * 1e9)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &when, NULL) == EINTR) {
        }
        size_t n = count - first < (size_t)batch ? count - first : (size_t)batch;
        /* One message per run of up to SEGMENTS datagrams of the same size. */
        size_t runs = 0;
        for (size_t i = 0; i < n; runs++) {
            size_t length = iov[first + i].iov_len, k = 1;
            while (i + k < n && k < (size_t)segments && iov[first + i + k].iov_len == length &&
                   (k + 1) * length <= MAX_GSO_BYTES)
                k++;
            struct msghdr *hdr = &msgs[runs].msg_hdr;
            memset(&msgs[runs], 0, sizeof msgs[runs]);
            hdr->msg_iov = &iov[first + i];
            hdr->msg_iovlen = k;
            if (k > 1) {
                hdr->msg_control = control[runs].bytes;
                hdr->msg_controllen = sizeof control[runs].bytes;
                struct cmsghdr *cmsg = CMSG_FIRSTHDR(hdr);
                cmsg->cmsg_level = SOL_UDP;
                cmsg->cmsg_type = UDP_SEGMENT;
                cmsg->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t size = (uint16_t)length;
                memcpy(CMSG_DATA(cmsg), &size, sizeof size);
            }
            i += k;
        }
        size_t done = 0;
        while (done < runs) {
            int sent = sendmmsg(sock, &msgs[done], (unsigned int)(runs - done), 0);
            if (sent > 0) {
                done += (size_t)sent;
                continue;
            }
            if (sent < 0 && errno == EINTR)
                continue;
            /* The send at done failed (ECONNREFUSED from an earlier ICMP, ENOBUFS): count
             * its datagrams and go on with the next one, like the Python sender. */
            int error = sent < 0 ? errno : 0;
            const struct msghdr *failed = &msgs[done].msg_hdr;
            size_t from = (size_t)(failed->msg_iov - iov);
            for (size_t d = from; d < from + failed->msg_iovlen; d++) {
                errors[error >= 0 && error < MAX_ERRNO ? error : 0]++;
                failed_datagrams++;
                long message = (long)(d / (size_t)per_message);
                if (message != last_failed_message) {
                    failed_messages++;
                    last_failed_message = message;
                }
            }
            done++;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &now);
    double elapsed = seconds_of(&now) - start_s;
    unsigned long messages = (unsigned long)(count / (size_t)per_message);

    printf("{\"datagrams\": %zu, \"sent\": %lu, \"failed_datagrams\": %lu, "
           "\"started\": %.6f, \"seconds\": %.6f, \"errors\": {",
           count, messages - failed_messages, failed_datagrams, seconds_of(&wall), elapsed);
    const char *separator = "";
    for (int e = 0; e < MAX_ERRNO; e++) {
        if (errors[e]) {
            printf("%s\"%d\": %lu", separator, e, errors[e]);
            separator = ", ";
        }
    }
    printf("}}\n");
    close(sock);
    free(iov);
    return 0;
}

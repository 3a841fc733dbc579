/* udp_floor: the kernel's cost of receiving UDP datagrams the way the relay's listener does,
 * with nothing else: no framing, no ring, no Python. What it takes per datagram is the floor
 * under the listener's CPU per datagram on this machine.
 *
 * usage: udp_floor PORT BATCH PER_EVENT NAP_US BUFFER IDLE_S
 *
 *   PORT       the UDP port to bind on 127.0.0.1 (SO_RCVBUF 8 MiB, capped by rmem_max)
 *   BATCH      datagrams per recvmmsg() call, each into its own BUFFER-byte buffer, with
 *              the sender's address (the listener: 64 buffers of DatagramReceiver.buffer_size)
 *   PER_EVENT  datagrams read per readiness event at most (the listener: UDP_READ_BATCH)
 *   NAP_US     pause after an event that emptied the socket (the listener: LISTENER_NAP)
 *   BUFFER     bytes per receive buffer
 *   IDLE_S     stop once no datagram came for this long, after the first one
 *
 * Prints {"bound": PORT} once bound, then at the end one JSON line: datagrams, events
 * (wake-ups), cpu_user and cpu_system (seconds, from the first datagram on) and
 * us_per_datagram. Built by bench/udp_floor.py with gcc -O2 at run time. */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

static double seconds_of(struct timeval t) { return (double)t.tv_sec + (double)t.tv_usec / 1e6; }

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: udp_floor PORT BATCH PER_EVENT NAP_US BUFFER IDLE_S\n");
        return 2;
    }
    int port = atoi(argv[1]), batch = atoi(argv[2]), per_event = atoi(argv[3]);
    long nap_us = atol(argv[4]), buffer = atol(argv[5]);
    int idle_ms = (int)(atof(argv[6]) * 1000);
    if (port < 1 || port > 65535 || batch < 1 || batch > 1024 || per_event < batch
        || nap_us < 0 || nap_us > 999999 || buffer < 1 || idle_ms < 1) {
        fprintf(stderr, "udp_floor: bad argument\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int wanted = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &wanted, sizeof wanted);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
    if (fd < 0 || bind(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        perror("udp_floor: bind");
        return 1;
    }
    char *buffers = malloc((size_t)batch * (size_t)buffer);
    struct mmsghdr *headers = calloc((size_t)batch, sizeof *headers);
    struct iovec *iovecs = calloc((size_t)batch, sizeof *iovecs);
    struct sockaddr_in6 *names = calloc((size_t)batch, sizeof *names);
    if (!buffers || !headers || !iovecs || !names) {
        perror("udp_floor: malloc");
        return 1;
    }
    for (int i = 0; i < batch; i++) {
        iovecs[i].iov_base = buffers + (size_t)i * (size_t)buffer;
        iovecs[i].iov_len = (size_t)buffer;
        headers[i].msg_hdr.msg_iov = &iovecs[i];
        headers[i].msg_hdr.msg_iovlen = 1;
        headers[i].msg_hdr.msg_name = &names[i];
    }
    int poller = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN};
    epoll_ctl(poller, EPOLL_CTL_ADD, fd, &event);
    printf("{\"bound\": %d}\n", port);
    fflush(stdout);

    long datagrams = 0, events = 0;
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
        for (int read = 0; read < per_event && !drained; read += batch) {
            for (int i = 0; i < batch; i++)
                headers[i].msg_hdr.msg_namelen = sizeof names[i];
            int received = recvmmsg(fd, headers, (unsigned)batch, MSG_DONTWAIT, NULL);
            if (received <= 0)
                break;
            for (int i = 0; i < received; i++)
                checksum += (unsigned char)((char *)iovecs[i].iov_base)[0];
            datagrams += received;
            drained = received < batch;
        }
        if (drained && nap_us) {
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

/* The socket-activated test app. It serves its release's version over HTTP/1.0 on the
 * socket systemd's protocol hands it (fd 3, LISTEN_FDS, LISTEN_PID), or on BIND=IP:PORT
 * it binds itself (with REUSEPORT=1: SO_REUSEPORT). What a release does is read from
 * files in its root, so one command serves every release:
 *   /version     the body it serves;
 *   /delay_ms    how long it boots before it accepts (default 0; with BIND, before it
 *                binds);
 *   /exit_code   exit at once with this status (a broken release);
 *   /never_ready boot, but never send READY=1 (and never accept).
 * With NOTIFY_SOCKET it sends READY=1 once it accepts, after it created /notifying (a
 * test's proof that the READY=1 the agent heard is this one). SIGTERM: it stops accepting,
 * answers nothing more, exits 0 (the connections still queued go to the other instance). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stopping;
static void on_term(int sig) { (void)sig; stopping = 1; }

static int read_file(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = 0;
    return (int)n;
}

static long file_num(const char *path, long dflt) {
    char b[32];
    return read_file(path, b, sizeof b) > 0 ? atol(b) : dflt;
}

static int inherited_socket(void) {
    const char *fds = getenv("LISTEN_FDS"), *pid = getenv("LISTEN_PID");
    if (!fds || !pid) return -1;
    if (atol(pid) != (long)getpid()) {
        fprintf(stderr, "sockapp: LISTEN_PID=%s is not my pid %ld\n", pid, (long)getpid());
        exit(4);
    }
    if (atoi(fds) < 1) exit(4);
    return 3;
}

static int bound_socket(void) {
    const char *bind_to = getenv("BIND");
    if (!bind_to) {
        fprintf(stderr, "sockapp: no LISTEN_FDS and no BIND\n");
        exit(3);
    }
    char host[64];
    const char *colon = strrchr(bind_to, ':');
    snprintf(host, sizeof host, "%.*s", (int)(colon - bind_to), bind_to);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
    inet_pton(AF_INET, host, &a.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (getenv("REUSEPORT")) setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 128)) {
        perror("sockapp: bind");
        exit(5);
    }
    return s;
}

static void notify_ready(void) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path) return;
    FILE *mark = fopen("/notifying", "w");
    if (mark) fclose(mark);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof a.sun_path) return;
    memcpy(a.sun_path, path, len);
    if (a.sun_path[0] == '@') a.sun_path[0] = 0;
    int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    const char msg[] = "READY=1\nSTATUS=serving";
    if (sendto(s, msg, sizeof msg - 1, 0, (struct sockaddr *)&a,
               offsetof(struct sockaddr_un, sun_path) + len) < 0)
        perror("sockapp: sd_notify");
    close(s);
}

int main(void) {
    char version[128] = "unknown";
    if (read_file("/version", version, sizeof version) > 0) version[strcspn(version, "\n")] = 0;
    long code = file_num("/exit_code", -1);
    if (code >= 0) {
        fprintf(stderr, "sockapp %s: exiting with %ld as told\n", version, code);
        return (int)code;
    }
    struct sigaction sa = {.sa_handler = on_term}; /* no SA_RESTART: accept returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int s = inherited_socket();
    /* It boots first; an app that binds its own port does so once booted, as real ones
     * do (the port is closed meanwhile). */
    long delay = file_num("/delay_ms", 0);
    struct timespec ts = {delay / 1000, (delay % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR && !stopping) {}
    if (s < 0) s = bound_socket();
    if (access("/never_ready", F_OK) == 0) {
        while (!stopping) pause();
        return 0;
    }
    notify_ready();
    fprintf(stderr, "sockapp %s: serving\n", version);
    char reply[512], req[4096];
    int n = snprintf(reply, sizeof reply,
                     "HTTP/1.0 200 OK\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     strlen(version), version);
    while (!stopping) {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        struct timeval tv = {2, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        size_t got = 0;
        while (got < sizeof req - 1) {
            ssize_t r = read(c, req + got, sizeof req - 1 - got);
            if (r <= 0) break;
            got += (size_t)r;
            req[got] = 0;
            if (strstr(req, "\r\n\r\n")) break;
        }
        if (write(c, reply, (size_t)n) < 0) {}
        close(c);
    }
    fprintf(stderr, "sockapp %s: stopped\n", version);
    return 0;
}

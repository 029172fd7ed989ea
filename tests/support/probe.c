/* The container fleet test's HTTP client. Its image is FROM scratch with a static busybox,
 * whose wget crashes there (static glibc's resolver wants NSS libraries the image lacks), so
 * this speaks HTTP/1.0 over IPv4 literals only, with no resolver at all.
 *   probe get IP:PORT PATH   prints the body of one GET; exit 1 unless the answer is 200.
 *   probe loop DIR           GETs / of every IP:PORT in DIR/targets (re-read each round),
 *                            round after round, keeping "ROUND OK FAILED" in DIR/counts
 *                            (replaced by rename) and appending "round R: IP:PORT WHY" to
 *                            DIR/fails for each failure.
 * Every request has a 3 s deadline for connect, send and each read. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REPLY_MAX 65536

/* GETs PATH from ADDR ("IP:PORT") into buf (NUL-terminated). Returns the body, or NULL with
 * why set. */
static char *get(const char *addr, const char *path, char *buf, size_t cap, const char **why) {
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host) return *why = "bad address", NULL;
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) return *why = "bad address", NULL;
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {3, 0};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); /* also bounds connect */
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) {
        close(s);
        return *why = "connect failed", NULL;
    }
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr);
    if (write(s, req, (size_t)n) != n) {
        close(s);
        return *why = "send failed", NULL;
    }
    size_t got = 0;
    ssize_t r;
    while (got < cap - 1 && (r = read(s, buf + got, cap - 1 - got)) > 0) got += (size_t)r;
    close(s);
    buf[got] = 0;
    if (strncmp(buf, "HTTP/1.", 7) || strncmp(buf + 8, " 200", 4))
        return *why = got ? "not a 200 answer" : "no answer", NULL;
    char *body = strstr(buf, "\r\n\r\n");
    return body ? body + 4 : (*why = "no header end", NULL);
}

static int loop(const char *dir) {
    char targets[256], counts[256], tmp[256], fails[256];
    snprintf(targets, sizeof targets, "%s/targets", dir);
    snprintf(counts, sizeof counts, "%s/counts", dir);
    snprintf(tmp, sizeof tmp, "%s/counts.tmp", dir);
    snprintf(fails, sizeof fails, "%s/fails", dir);
    static char buf[REPLY_MAX];
    unsigned long round = 0, ok = 0, bad = 0;
    for (;;) {
        char list[4096] = "";
        FILE *t = fopen(targets, "r");
        if (t) {
            size_t n = fread(list, 1, sizeof list - 1, t);
            list[n] = 0;
            fclose(t);
        }
        for (char *save, *addr = strtok_r(list, " \n", &save); addr;
             addr = strtok_r(NULL, " \n", &save)) {
            const char *why = NULL;
            if (get(addr, "/", buf, sizeof buf, &why)) {
                ok++;
                continue;
            }
            bad++;
            FILE *f = fopen(fails, "a");
            if (f) fprintf(f, "round %lu: %s %s\n", round, addr, why), fclose(f);
        }
        round++;
        FILE *c = fopen(tmp, "w");
        if (c) fprintf(c, "%lu %lu %lu\n", round, ok, bad), fclose(c), rename(tmp, counts);
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "get")) {
        static char buf[REPLY_MAX];
        const char *why = NULL;
        char *body = get(argv[2], argv[3], buf, sizeof buf, &why);
        if (!body) {
            fprintf(stderr, "probe: GET http://%s%s: %s\n", argv[2], argv[3], why);
            return 1;
        }
        fputs(body, stdout);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "loop")) return loop(argv[2]);
    fprintf(stderr, "usage: probe get IP:PORT PATH | probe loop DIR\n");
    return 2;
}

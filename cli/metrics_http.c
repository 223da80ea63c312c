/*
 * metrics_http.c - serves /metrics for `warren run` with libmicrohttpd,
 * bound only to the configured address, driven from the supervisor's own
 * loop (cli_http_wait) rather than a thread of its own: the supervisor
 * forks workers, and a fork while another thread holds an allocator lock
 * can leave the child deadlocked (seen under ASan).
 *
 * The socket is bound here, not by libmicrohttpd, so that a port in use is
 * reported with the OS's reason and the address at start (exit 11), and so
 * that forked workers can close it. Only GET and HEAD of /metrics answer;
 * other paths get 404, other methods 405.
 */
#include "cli.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct cli_http {
    struct MHD_Daemon *d;
    int fd;
    cli_pool_view *view;
};

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status,
                             const char *text) {
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (r == NULL) {
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "text/plain; charset=utf-8");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED) {
        MHD_add_response_header(r, "Allow", "GET, HEAD");
    }
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *version, const char *upload,
                                  size_t *upload_size, void **state) {
    cli_http *h = cls;
    (void)version;
    (void)upload;
    (void)state;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        *upload_size = 0; /* a body, if any, is not read */
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    if (strcmp(url, "/metrics") != 0) {
        return reply(conn, MHD_HTTP_NOT_FOUND, "not found: try /metrics\n");
    }
    char *text;
    size_t len;
    if (cli_view_render(h->view, &text, &len) != 0) {
        return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type",
                            "text/plain; version=0.0.4; charset=utf-8");
    enum MHD_Result rc = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return rc;
}

/* Splits "HOST:PORT" or "[V6]:PORT" (config.c checked the shape). */
static int split(const char *addr, char *host, size_t hostlen, char *port,
                 size_t portlen) {
    const char *colon = strrchr(addr, ':');
    if (colon == NULL) {
        return -1;
    }
    const char *h = addr;
    size_t n = (size_t)(colon - addr);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n == 0 || n >= hostlen || strlen(colon + 1) >= portlen) {
        return -1;
    }
    memcpy(host, h, n);
    host[n] = '\0';
    snprintf(port, portlen, "%s", colon + 1);
    return 0;
}

static int bind_listen(const char *addr, char *err, size_t errlen) {
    char host[256], port[16];
    if (split(addr, host, sizeof host, port, sizeof port) != 0) {
        snprintf(err, errlen,
                 "metrics.listen \"%s\": expected HOST:PORT or [V6]:PORT",
                 addr);
        return -1;
    }
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int g = getaddrinfo(host, port, &hints, &ai);
    if (g != 0) {
        snprintf(err, errlen, "metrics.listen \"%s\": %s", addr,
                 gai_strerror(g));
        return -1;
    }
    int fd =
        socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        snprintf(err, errlen, "metrics.listen \"%s\": socket: %s", addr,
                 strerror(errno));
        freeaddrinfo(ai);
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 16) != 0) {
        int e = errno;
        snprintf(err, errlen, "metrics.listen \"%s\": cannot listen: %s%s",
                 addr, strerror(e),
                 e == EADDRINUSE ? " (another process holds the port: stop "
                                   "it or choose another port)"
                 : e == EADDRNOTAVAIL ? " (not an address of this host)"
                                      : "");
        close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    return fd;
}

int cli_http_start(const char *addr, cli_pool_view *v, cli_http **out,
                   char *err, size_t errlen) {
    cli_http *h = calloc(1, sizeof *h);
    if (h == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    h->view = v;
    h->fd = bind_listen(addr, err, errlen);
    if (h->fd < 0) {
        free(h);
        return -1;
    }
    /* A handful of scrapers at most: a small connection cap and a timeout
     * keep a stuck client from holding sockets open. */
    h->d = MHD_start_daemon(
        MHD_NO_FLAG, 0, NULL, NULL, on_request, h, MHD_OPTION_LISTEN_SOCKET,
        h->fd, MHD_OPTION_CONNECTION_LIMIT, (unsigned)16,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    if (h->d == NULL) {
        snprintf(err, errlen,
                 "metrics.listen \"%s\": libmicrohttpd would not start", addr);
        close(h->fd);
        free(h);
        return -1;
    }
    *out = h;
    return 0;
}

void cli_http_wait(cli_http *h, int timeout_ms) {
    if (h == NULL) {
        struct timespec ts = {timeout_ms / 1000,
                              (long)(timeout_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        return;
    }
    fd_set rs, ws, es;
    MHD_socket max = 0;
    FD_ZERO(&rs);
    FD_ZERO(&ws);
    FD_ZERO(&es);
    MHD_UNSIGNED_LONG_LONG mhd_ms;
    if (MHD_get_timeout(h->d, &mhd_ms) == MHD_YES &&
        mhd_ms < (MHD_UNSIGNED_LONG_LONG)timeout_ms) {
        timeout_ms = (int)mhd_ms;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    if (MHD_get_fdset2(h->d, &rs, &ws, &es, &max, FD_SETSIZE) != MHD_YES) {
        select(0, NULL, NULL, NULL, &tv);
        return;
    }
    /* EINTR (a signal) just ends the wait early. */
    select(max + 1, &rs, &ws, &es, &tv);
    MHD_run_from_select(h->d, &rs, &ws, &es);
}

int cli_http_fd(const cli_http *h) {
    return h ? h->fd : -1;
}

void cli_http_stop(cli_http *h) {
    if (h == NULL) {
        return;
    }
    MHD_stop_daemon(h->d);
    close(h->fd);
    free(h);
}

/*
 * exec.c - handlers that are programs ("exec:PATH [ARGS...]"), one child
 * process per message, never through a shell.
 *
 * Promises: the body goes to the child's stdin while its stdout and stderr
 * are drained (poll), so neither a large body nor a chatty child can
 * deadlock; what it prints is logged line by line as "handler_output"
 * events (valid UTF-8, at most OUTPUT_LINE_MAX bytes a line and
 * OUTPUT_MSG_MAX a message, the rest counted and marked truncated), never
 * written raw into the worker's stderr; a child that stops reading cannot
 * kill the worker with SIGPIPE; the child runs in
 * its own process group with no inherited descriptors beyond 0-2 and without
 * WARREN_URL and WARREN_BROKER_PASSWORD (credentials never reach handlers);
 * past the deadline the group gets SIGTERM, then SIGKILL after 2 s; and the
 * child is always reaped. Exit 0 acks, 75 retries, 65 dead-letters, anything
 * else retries; the last line of stderr (at most 1 KiB) is the reason when it
 * does not ack.
 */
#include "handler.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define EXIT_RETRY 75 /* EX_TEMPFAIL */
#define EXIT_DEAD 65  /* EX_DATAERR */
#define KILL_GRACE_MS 2000
/* How long to keep reading stderr after the child exited, for output of
 * grandchildren that still hold the pipe; they are not ours to wait for. */
#define DRAIN_AFTER_EXIT_MS 500
#define REASON_MAX WARREN__ERROR_MAX
/* Caps on what a handler's output puts in the log: bytes of one line, and
 * of all lines of one message (both streams). Past them output is still
 * read (the child never blocks on a full pipe), but only counted. */
#define OUTPUT_LINE_MAX 1024
#define OUTPUT_MSG_MAX (64 * 1024)

typedef struct {
    char **argv;             /* argv[0] as written in the config */
    char path[PATH_MAX + 1]; /* resolved at load: immune to later chdir */
} exec_handler;

/* Variables the worker sets for the child; inherited copies are dropped so
 * a stale value from the worker's own environment never leaks through. */
static const char *const own_vars[] = {
    "WARREN_URL", /* dropped and never set: it carries credentials */
    "WARREN_BROKER_PASSWORD", /* the same */
    "WARREN_MESSAGE_ID",
    "WARREN_ATTEMPT",
    "WARREN_QUEUE",
    "WARREN_ROUTING_KEY",
    "WARREN_CONTENT_TYPE",
    "WARREN_CORRELATION_ID",
    "WARREN_DEADLINE_MS",
};
#define N_OWN_VARS (sizeof own_vars / sizeof own_vars[0])

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    WARREN_PRINTF(3, 4);
static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    if (err == NULL || errlen == 0) {
        return;
    }
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------------
 * Spec parsing
 * ---------------------------------------------------------------------- */

int warren__exec_split(const char *s, char ***argv, char *err, size_t errlen) {
    *argv = NULL;
    size_t len = strlen(s);
    if (len > WARREN__SPEC_MAX) {
        seterr(err, errlen, "exec handler: longer than %d bytes",
               WARREN__SPEC_MAX);
        return WARREN_ERR_CONFIG;
    }
    /* One block: the pointer array, then the unquoted strings (never
     * longer than the input plus one NUL per argument). */
    size_t ptrs = (WARREN__EXEC_MAX_ARGS + 1) * sizeof(char *);
    char **v = malloc(ptrs + 2 * len + 2);
    if (v == NULL) {
        seterr(err, errlen, "out of memory");
        return WARREN_ERR_NOMEM;
    }
    char *o = (char *)v + ptrs;
    int n = 0;
    const char *p = s;
    for (;;) {
        p += strspn(p, " \t");
        if (*p == '\0') {
            break;
        }
        if (n == WARREN__EXEC_MAX_ARGS) {
            seterr(err, errlen, "exec handler \"%.200s\": more than %d words",
                   s, WARREN__EXEC_MAX_ARGS);
            free(v);
            return WARREN_ERR_CONFIG;
        }
        v[n++] = o;
        int quoted = 0;
        while (*p != '\0' && (quoted || (*p != ' ' && *p != '\t'))) {
            if (*p == '\\' && (p[1] == '"' || p[1] == '\\')) {
                *o++ = p[1];
                p += 2;
            } else if (*p == '"') {
                quoted = !quoted;
                p++;
            } else {
                *o++ = *p++;
            }
        }
        if (quoted) {
            seterr(err, errlen,
                   "exec handler \"%.200s\": unterminated double quote", s);
            free(v);
            return WARREN_ERR_CONFIG;
        }
        *o++ = '\0';
    }
    v[n] = NULL;
    if (n == 0 || v[0][0] == '\0') {
        seterr(err, errlen,
               "handler \"exec:%.200s\": no program; expected "
               "\"exec:PATH [ARGS...]\"",
               s);
        free(v);
        return WARREN_ERR_CONFIG;
    }
    *argv = v;
    return n;
}

/* ------------------------------------------------------------------------
 * The child
 * ---------------------------------------------------------------------- */

static int is_own_var(const char *kv) {
    for (size_t i = 0; i < N_OWN_VARS; i++) {
        size_t n = strlen(own_vars[i]);
        if (strncmp(kv, own_vars[i], n) == 0 && kv[n] == '=') {
            return 1;
        }
    }
    return 0;
}

/* Builds the child's environment before fork: after fork in a threaded
 * process only async-signal-safe calls are allowed, and malloc is not. One
 * block holds the array and the added "NAME=value" strings. */
static char **build_env(const warren_msg *msg, const warren_ctx *ctx) {
    char num[2][32];
    const char *add[N_OWN_VARS][2];
    size_t nadd = 0;
    size_t nenv = 0;
    size_t bytes = 0;
    const char *v;

#define ADD(name, val)                                                         \
    do {                                                                       \
        if ((val) != NULL) {                                                   \
            add[nadd][0] = (name);                                             \
            add[nadd][1] = (val);                                              \
            bytes += strlen(name) + strlen(val) + 2;                           \
            nadd++;                                                            \
        }                                                                      \
    } while (0)
    ADD("WARREN_MESSAGE_ID", warren_msg_id(msg));
    snprintf(num[0], sizeof num[0], "%d", warren_msg_attempt(msg));
    ADD("WARREN_ATTEMPT", (const char *)num[0]);
    ADD("WARREN_QUEUE", warren_msg_queue(msg));
    ADD("WARREN_ROUTING_KEY", warren_msg_routing_key(msg));
    ADD("WARREN_CONTENT_TYPE", warren_msg_content_type(msg));
    ADD("WARREN_CORRELATION_ID", warren_msg_correlation_id(msg));
    int64_t deadline = warren_ctx_deadline(ctx);
    v = NULL;
    if (deadline > 0) {
        snprintf(num[1], sizeof num[1], "%lld", (long long)deadline);
        v = num[1];
    }
    ADD("WARREN_DEADLINE_MS", v);
#undef ADD

    for (char **e = environ; e && *e; e++) {
        nenv++;
    }
    size_t ptrs = (nenv + nadd + 1) * sizeof(char *);
    char **env = malloc(ptrs + bytes);
    if (env == NULL) {
        return NULL;
    }
    char *o = (char *)env + ptrs;
    size_t k = 0;
    for (size_t i = 0; i < nenv; i++) {
        if (!is_own_var(environ[i])) {
            env[k++] = environ[i];
        }
    }
    for (size_t i = 0; i < nadd; i++) {
        int w = sprintf(o, "%s=%s", add[i][0], add[i][1]);
        env[k++] = o;
        o += w + 1;
    }
    env[k] = NULL;
    return env;
}

static void close_other_fds(void) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0) {
        return;
    }
#endif
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536) {
        max = 65536;
    }
    for (int fd = 3; fd < max; fd++) {
        close(fd);
    }
}

/* Runs in the forked child: async-signal-safe calls only. */
static void child(const exec_handler *x, char **env, int in_fd, int out_fd,
                  int err_fd, pid_t parent) {
    struct sigaction dfl;
    sigset_t none;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    /* Ignored signals and the mask survive exec: give the program the
     * defaults it expects (a worker may ignore SIGPIPE or block SIGTERM). */
    for (int s = 1; s < NSIG; s++) {
        if (s != SIGKILL && s != SIGSTOP) {
            sigaction(s, &dfl, NULL);
        }
    }
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setpgid(0, 0);
    /* A worker that is SIGKILLed (crash, deadline) takes its handler with
     * it, rather than leaving an orphan that still applies its effect for
     * a message the broker is about to redeliver. The check after it
     * covers a parent that died before the call. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) {
        _exit(127);
    }
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0) {
        _exit(127);
    }
    close_other_fds();
    execve(x->path, x->argv, env);
    static const char msg[] = "warren: exec failed: errno ";
    char num[16];
    int n = sizeof num, e = errno;
    do {
        num[--n] = (char)('0' + e % 10);
        e /= 10;
    } while (e && n > 0);
    ssize_t unused = write(2, msg, sizeof msg - 1);
    unused = write(2, num + n, sizeof num - (size_t)n);
    unused = write(2, "\n", 1);
    (void)unused;
    _exit(127);
}

/* ------------------------------------------------------------------------
 * The worker's side
 * ---------------------------------------------------------------------- */

warren_result warren__exec_map_status(int wait_status) {
    if (WIFEXITED(wait_status)) {
        switch (WEXITSTATUS(wait_status)) {
        case 0:
            return WARREN_ACK;
        case EXIT_DEAD:
            return WARREN_DEAD;
        default:
            return WARREN_RETRY;
        }
    }
    return WARREN_RETRY;
}

/* The last complete line of stderr, kept while the rest passes through. */
typedef struct {
    char cur[REASON_MAX + 1];
    size_t cur_len;
    char last[REASON_MAX + 1];
} last_line;

static void line_feed(last_line *l, const char *buf, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char c = buf[i];
        if (c == '\n') {
            /* A trailing "\r" from a CRLF program is not part of the
             * reason; blank lines do not replace a real one. */
            if (l->cur_len && l->cur[l->cur_len - 1] == '\r') {
                l->cur_len--;
            }
            if (l->cur_len) {
                memcpy(l->last, l->cur, l->cur_len);
                l->last[l->cur_len] = '\0';
            }
            l->cur_len = 0;
        } else if (l->cur_len < REASON_MAX) {
            l->cur[l->cur_len++] = c;
        }
    }
}

static void line_end(last_line *l) {
    if (l->cur_len) {
        line_feed(l, "\n", 1);
    }
}

/* One stream of the child's output on its way to the log. */
typedef struct {
    const char *name; /* "stdout" or "stderr" */
    char line[OUTPUT_LINE_MAX];
    size_t len;
    int cut;          /* the current line is longer than OUTPUT_LINE_MAX */
    uint64_t dropped; /* bytes not logged: past OUTPUT_MSG_MAX */
} out_stream;

typedef struct {
    const warren_msg *msg;
    size_t logged; /* bytes of lines logged for this message */
    out_stream s[2];
} output_log;

/* Copies `in` into `out` (room for OUTPUT_LINE_MAX bytes and a NUL) as
 * valid UTF-8: NUL and every byte not part of a well-formed sequence become
 * U+FFFD. Control characters stay; the JSON writer escapes them. Returns 1
 * if it stopped short of the end for lack of room. */
static int to_utf8(const unsigned char *in, size_t n, char *out,
                   size_t *out_len) {
    static const char repl[] = "\xEF\xBF\xBD";
    size_t o = 0, i = 0;
    while (i < n) {
        unsigned char c = in[i];
        size_t k = c == 0 ? 9 : 0;
        if (c >= 0x80) {
            k = c >= 0xC2 && c <= 0xDF   ? 1
                : (c & 0xF0) == 0xE0     ? 2
                : c >= 0xF0 && c <= 0xF4 ? 3
                                         : 9;
        }
        if (k != 9 && k > 0) {
            if (k > n - i - 1) {
                k = 9;
            }
            for (size_t j = 1; k != 9 && j <= k; j++) {
                if ((in[i + j] & 0xC0) != 0x80) {
                    k = 9;
                }
            }
            /* Overlong 3-byte forms and UTF-16 surrogates are not UTF-8. */
            if (k == 2 && ((c == 0xE0 && in[i + 1] < 0xA0) ||
                           (c == 0xED && in[i + 1] >= 0xA0))) {
                k = 9;
            }
            if (k == 3 && ((c == 0xF0 && in[i + 1] < 0x90) ||
                           (c == 0xF4 && in[i + 1] >= 0x90))) {
                k = 9;
            }
        }
        const char *src = k == 9 ? repl : (const char *)in + i;
        size_t w = k == 9 ? 3 : k + 1;
        if (o + w > OUTPUT_LINE_MAX) {
            *out_len = o;
            out[o] = '\0';
            return 1;
        }
        memcpy(out + o, src, w);
        o += w;
        i += k == 9 ? 1 : k + 1;
    }
    *out_len = o;
    out[o] = '\0';
    return 0;
}

static void output_event(const output_log *ol, const out_stream *st,
                         int truncated, const char *text) {
    warren__log_output(WARREN_LOG_INFO,
                       &(warren__log_fields){"handler_output",
                                             warren_msg_queue(ol->msg),
                                             warren_msg_id(ol->msg), NULL,
                                             warren_msg_attempt(ol->msg), -1},
                       st->name, truncated, text);
}

static void output_line_end(output_log *ol, out_stream *st) {
    char text[OUTPUT_LINE_MAX + 1];
    size_t n = st->len;
    if (n && st->line[n - 1] == '\r' && !st->cut) {
        n--;
    }
    int cut = st->cut;
    st->len = 0;
    st->cut = 0;
    if (n == 0 && !cut) {
        return; /* blank lines say nothing */
    }
    if (ol->logged + n > OUTPUT_MSG_MAX) {
        st->dropped += n;
        return;
    }
    size_t len = 0;
    cut |= to_utf8((const unsigned char *)st->line, n, text, &len);
    ol->logged += n;
    output_event(ol, st, cut, text);
}

static void output_feed(output_log *ol, out_stream *st, const char *buf,
                        size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            output_line_end(ol, st);
        } else if (st->len < sizeof st->line) {
            st->line[st->len++] = buf[i];
        } else {
            st->cut = 1;
            if (ol->logged >= OUTPUT_MSG_MAX) {
                st->dropped++;
            }
        }
    }
}

/* At the end of a message: a last line without a newline, and one line per
 * stream saying how much was not logged. */
static void output_finish(output_log *ol) {
    for (int k = 0; k < 2; k++) {
        out_stream *st = &ol->s[k];
        if (st->len || st->cut) {
            output_line_end(ol, st);
        }
        if (st->dropped) {
            char text[160];
            snprintf(text, sizeof text,
                     "%llu more bytes of %s not logged (at most %d bytes of "
                     "output are logged per message)",
                     (unsigned long long)st->dropped, st->name, OUTPUT_MSG_MAX);
            output_event(ol, st, 1, text);
        }
    }
}

static int pidfd_for(pid_t pid) {
#ifdef SYS_pidfd_open
    int fd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (fd >= 0) {
        fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    return fd;
#else
    (void)pid;
    return -1;
#endif
}

/* Writes as much of the body as the pipe takes now. Returns 1 when the
 * stdin side is finished (all written, or the child closed it), else 0.
 * SIGPIPE is blocked by the caller, so a closed pipe is EPIPE here. */
static int feed(int fd, const uint8_t *body, size_t len, size_t *off) {
    while (*off < len) {
        size_t chunk = len - *off;
        if (chunk > 65536) {
            chunk = 65536;
        }
        ssize_t w = write(fd, body + *off, chunk);
        if (w > 0) {
            *off += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        } else {
            return 1; /* EPIPE: the child did not want (all of) it */
        }
    }
    return 1;
}

typedef struct {
    pid_t pid;
    int in_fd;  /* our write end of the child's stdin, -1 when done */
    int out_fd; /* our read end of the child's stdout, -1 at EOF */
    int err_fd; /* our read end of the child's stderr, -1 at EOF */
    int pidfd;  /* readable when the child exits; -1: poll in ticks */
    int status;
    int reaped;
    int timed_out;
    int64_t allowed_ms; /* the budget at the start, for the reason */
} run_state;

static void close_fd(int *fd) {
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Has the child exited? Reaps it, but first (if it was timed out) kills
 * whatever is left of its group: while the leader is an unreaped zombie its
 * pid, and so the group id, cannot be reused by an unrelated process. */
static void try_reap(run_state *st) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    if (waitid(P_PID, (id_t)st->pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
        if (errno == ECHILD) {
            /* Someone else reaped it (a SIGCHLD handler): status unknown. */
            st->reaped = 1;
            st->status = -1;
        }
        return;
    }
    if (info.si_pid != st->pid) {
        return; /* still running */
    }
    if (st->timed_out) {
        kill(-st->pid, SIGKILL);
    }
    for (;;) {
        pid_t r = waitpid(st->pid, &st->status, 0);
        if (r == st->pid || (r < 0 && errno != EINTR)) {
            if (r < 0) {
                st->status = -1;
            }
            break;
        }
    }
    st->reaped = 1;
}

static void supervise(run_state *st, const warren_msg *msg,
                      int64_t deadline_mono, last_line *ll, output_log *ol) {
    size_t len = 0;
    const uint8_t *body = warren_msg_body(msg, &len);
    size_t off = 0;
    int64_t kill_at = 0;
    int64_t drain_until = 0;
    char buf[8192];

    if (st->in_fd >= 0 && feed(st->in_fd, body, len, &off)) {
        close_fd(&st->in_fd);
    }
    for (;;) {
        int64_t now = warren__mono_ms();
        if (!st->reaped) {
            try_reap(st);
            if (st->reaped) {
                close_fd(&st->in_fd);
                drain_until = now + DRAIN_AFTER_EXIT_MS;
            }
        }
        if (st->reaped &&
            ((st->err_fd < 0 && st->out_fd < 0) || now >= drain_until)) {
            break;
        }
        if (!st->reaped && deadline_mono > 0 && !st->timed_out &&
            now >= deadline_mono) {
            st->timed_out = 1;
            kill(-st->pid, SIGTERM);
            kill_at = now + KILL_GRACE_MS;
            close_fd(&st->in_fd);
            warren__log(WARREN_LOG_WARN, NULL,
                        "exec handler pid %d past its deadline: SIGTERM to "
                        "its process group",
                        (int)st->pid);
        }
        if (!st->reaped && st->timed_out && kill_at && now >= kill_at) {
            kill(-st->pid, SIGKILL);
            kill_at = 0;
            warren__log(WARREN_LOG_WARN, NULL,
                        "exec handler pid %d ignored SIGTERM for %d ms: "
                        "SIGKILL",
                        (int)st->pid, KILL_GRACE_MS);
        }

        int64_t wait = -1;
        if (st->reaped) {
            wait = drain_until - now;
        } else if (st->timed_out) {
            wait = kill_at ? kill_at - now : 50;
        } else if (deadline_mono > 0) {
            wait = deadline_mono - now;
        }
        if (!st->reaped && st->pidfd < 0 && (wait < 0 || wait > 10)) {
            wait = 10; /* no pidfd: notice the exit by polling */
        }
        if (wait < 0 || wait > 1000) {
            wait = 1000; /* re-check the clock now and then regardless */
        }

        struct pollfd pf[4];
        int n = 0, i_in = -1, i_out = -1, i_err = -1;
        if (st->in_fd >= 0) {
            i_in = n;
            pf[n].fd = st->in_fd;
            pf[n++].events = POLLOUT;
        }
        if (st->out_fd >= 0) {
            i_out = n;
            pf[n].fd = st->out_fd;
            pf[n++].events = POLLIN;
        }
        if (st->err_fd >= 0) {
            i_err = n;
            pf[n].fd = st->err_fd;
            pf[n++].events = POLLIN;
        }
        if (!st->reaped && st->pidfd >= 0) {
            pf[n].fd = st->pidfd;
            pf[n++].events = POLLIN;
        }
        int r = poll(pf, (nfds_t)n, (int)wait);
        if (r < 0 && errno != EINTR) {
            warren__log(WARREN_LOG_ERROR, NULL, "exec handler: poll: %s",
                        strerror(errno));
        }
        if (r <= 0) {
            continue;
        }
        if (i_in >= 0 && pf[i_in].revents) {
            if (feed(st->in_fd, body, len, &off)) {
                close_fd(&st->in_fd);
            }
        }
        if (i_out >= 0 && pf[i_out].revents) {
            ssize_t got = read(st->out_fd, buf, sizeof buf);
            if (got > 0) {
                output_feed(ol, &ol->s[0], buf, (size_t)got);
            } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
                close_fd(&st->out_fd);
            }
        }
        if (i_err >= 0 && pf[i_err].revents) {
            ssize_t got = read(st->err_fd, buf, sizeof buf);
            if (got > 0) {
                line_feed(ll, buf, (size_t)got);
                output_feed(ol, &ol->s[1], buf, (size_t)got);
            } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
                close_fd(&st->err_fd);
            }
        }
    }
    close_fd(&st->in_fd);
    close_fd(&st->out_fd);
    close_fd(&st->err_fd);
    close_fd(&st->pidfd);
    line_end(ll);
    output_finish(ol);
}

static void describe(const run_state *st, char *out, size_t outlen) {
    if (st->status == -1) {
        snprintf(out, outlen, "handler exit status lost (reaped elsewhere)");
    } else if (WIFEXITED(st->status)) {
        int code = WEXITSTATUS(st->status);
        snprintf(out, outlen, "handler exited with status %d%s", code,
                 code == EXIT_DEAD    ? " (EX_DATAERR: dead-letter)"
                 : code == EXIT_RETRY ? " (EX_TEMPFAIL: retry)"
                                      : "");
    } else if (WIFSIGNALED(st->status)) {
        snprintf(out, outlen, "handler killed by signal %d (%s)",
                 WTERMSIG(st->status), strsignal(WTERMSIG(st->status)));
    } else {
        snprintf(out, outlen, "handler ended with wait status %d", st->status);
    }
}

static warren_result exec_call(const warren_msg *msg, warren_ctx *ctx,
                               void *user) {
    const exec_handler *x = user;
    int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1};
    run_state st = {
        .pid = -1, .in_fd = -1, .out_fd = -1, .err_fd = -1, .pidfd = -1};
    int64_t deadline = warren_ctx_deadline(ctx);
    int64_t deadline_mono = 0;
    sigset_t pipe_set, old_mask, pending;
    int had_sigpipe;

    if (deadline > 0) {
        st.allowed_ms = deadline - warren__now_ms();
        if (st.allowed_ms <= 0) {
            warren_ctx_set_error(ctx, "handler timed out after 0 ms (the "
                                      "deadline passed before it started)");
            return WARREN_RETRY;
        }
        deadline_mono = warren__mono_ms() + st.allowed_ms;
    }
    char **env = build_env(msg, ctx);
    if (env == NULL) {
        warren_ctx_set_error(ctx, "exec handler: out of memory");
        return WARREN_RETRY;
    }
    if (pipe2(in_pipe, O_CLOEXEC) != 0 || pipe2(out_pipe, O_CLOEXEC) != 0 ||
        pipe2(err_pipe, O_CLOEXEC) != 0) {
        warren_ctx_set_error(ctx, "exec handler: pipe: %s", strerror(errno));
        close_fd(&in_pipe[0]);
        close_fd(&in_pipe[1]);
        close_fd(&out_pipe[0]);
        close_fd(&out_pipe[1]);
        free(env);
        return WARREN_RETRY;
    }

    /* SIGPIPE stays blocked on this thread while we write: a child that
     * exits without reading its stdin gives us EPIPE, not a dead worker. */
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigpending(&pending);
    had_sigpipe = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_mask);

    pid_t self = getpid();
    st.pid = fork();
    if (st.pid == 0) {
        child(x, env, in_pipe[0], out_pipe[1], err_pipe[1], self);
    }
    int fork_errno = errno;
    free(env);
    close_fd(&in_pipe[0]);
    close_fd(&out_pipe[1]);
    close_fd(&err_pipe[1]);
    st.in_fd = in_pipe[1];
    st.out_fd = out_pipe[0];
    st.err_fd = err_pipe[0];
    if (st.pid < 0) {
        close_fd(&st.in_fd);
        close_fd(&st.out_fd);
        close_fd(&st.err_fd);
        pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
        warren_ctx_set_error(ctx, "exec handler: fork: %s",
                             strerror(fork_errno));
        return WARREN_RETRY;
    }
    /* Also from this side, so the group exists before we might signal it. */
    setpgid(st.pid, st.pid);
    fcntl(st.in_fd, F_SETFL, O_NONBLOCK);
    fcntl(st.out_fd, F_SETFL, O_NONBLOCK);
    fcntl(st.err_fd, F_SETFL, O_NONBLOCK);
    st.pidfd = pidfd_for(st.pid);

    last_line ll;
    memset(&ll, 0, sizeof ll);
    output_log ol;
    memset(&ol, 0, sizeof ol);
    ol.msg = msg;
    ol.s[0].name = "stdout";
    ol.s[1].name = "stderr";
    supervise(&st, msg, deadline_mono, &ll, &ol);

    if (!had_sigpipe) {
        /* Consume a SIGPIPE our writes raised, so unblocking it does not
         * deliver it to the worker after all. */
        struct timespec zero = {0, 0};
        sigpending(&pending);
        if (sigismember(&pending, SIGPIPE)) {
            sigtimedwait(&pipe_set, NULL, &zero);
        }
    }
    pthread_sigmask(SIG_SETMASK, &old_mask, NULL);

    warren_result r;
    if (st.timed_out) {
        r = WARREN_RETRY;
        warren_ctx_set_error(ctx, "handler timed out after %lld ms%s%.900s",
                             (long long)st.allowed_ms,
                             ll.last[0] ? "; its last stderr line: " : "",
                             ll.last);
    } else {
        r = st.status == -1 ? WARREN_RETRY : warren__exec_map_status(st.status);
        if (r != WARREN_ACK) {
            if (ll.last[0]) {
                warren_ctx_set_error(ctx, "%s", ll.last);
            } else {
                char why[128];
                describe(&st, why, sizeof why);
                warren_ctx_set_error(ctx, "%s", why);
            }
        }
    }
    if (warren__log_enabled(WARREN_LOG_DEBUG)) {
        char why[128];
        describe(&st, why, sizeof why);
        warren__log(WARREN_LOG_DEBUG, NULL, "exec handler pid %d: %s",
                    (int)st.pid, why);
    }
    return r;
}

static void exec_free(void *user) {
    exec_handler *x = user;
    if (x) {
        free(x->argv);
        free(x);
    }
}

int warren__exec_load(const char *rest, warren__handler_parts *out, char *err,
                      size_t errlen) {
    char **argv = NULL;
    struct stat sb;
    memset(out, 0, sizeof *out);
    int n = warren__exec_split(rest, &argv, err, errlen);
    if (n < 0) {
        return n;
    }
    const char *prog = argv[0];
    if (stat(prog, &sb) != 0) {
        char cwd[PATH_MAX];
        int e = errno;
        if (getcwd(cwd, sizeof cwd) == NULL) {
            snprintf(cwd, sizeof cwd, "?");
        }
        seterr(err, errlen,
               "exec handler %s: %s (relative paths are from the working "
               "directory %s)",
               prog, strerror(e), cwd);
        free(argv);
        return WARREN_ERR_HANDLER;
    }
    if (S_ISDIR(sb.st_mode)) {
        seterr(err, errlen, "exec handler %s: is a directory, not a program",
               prog);
        free(argv);
        return WARREN_ERR_HANDLER;
    }
    if (access(prog, X_OK) != 0) {
        seterr(err, errlen, "exec handler %s: not executable (%s): chmod +x %s",
               prog, strerror(errno), prog);
        free(argv);
        return WARREN_ERR_HANDLER;
    }
    exec_handler *x = calloc(1, sizeof *x);
    if (x == NULL || realpath(prog, x->path) == NULL) {
        seterr(err, errlen, "exec handler %s: %s", prog,
               x ? strerror(errno) : "out of memory");
        free(x);
        free(argv);
        return x ? WARREN_ERR_HANDLER : WARREN_ERR_NOMEM;
    }
    x->argv = argv;
    out->fn = exec_call;
    out->fini = exec_free;
    out->user = x;
    return 0;
}

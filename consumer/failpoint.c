/*
 * failpoint.c - the chaos suite's crash points (see failpoint.h). Compiled
 * to an empty unit unless the build has WARREN_FAILPOINTS. The spec is
 * parsed once; a hit costs a string compare per armed point, and nothing
 * when none is armed.
 */
#include "failpoint.h"

#ifdef WARREN_FAILPOINTS

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_POINTS 8

typedef struct {
    char name[64];
    long at_hit; /* die at this hit in this process */
    long times;  /* at most this many deaths across processes */
    long hits;
} point;

static point points[MAX_POINTS];
static int n_points;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void parse_spec(void) {
    const char *spec = getenv("WARREN_FAILPOINT");
    if (spec == NULL) {
        return;
    }
    char buf[512];
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save);
         tok != NULL && n_points < MAX_POINTS;
         tok = strtok_r(NULL, ",", &save)) {
        point *p = &points[n_points];
        char *colon = strchr(tok, ':');
        p->at_hit = 1;
        p->times = 1;
        if (colon != NULL) {
            *colon = '\0';
            char *end = NULL;
            p->at_hit = strtol(colon + 1, &end, 10);
            if (end != NULL && *end == ':') {
                p->times = strtol(end + 1, NULL, 10);
            }
        }
        if (p->at_hit < 1 || p->times < 1 || tok[0] == '\0') {
            continue; /* malformed entry: ignored, the test will see no hit */
        }
        snprintf(p->name, sizeof p->name, "%s", tok);
        n_points++;
    }
}

/* Takes one of the T deaths allowed across processes: creates the first
 * free marker file <dir>/<name>.<k>, k < times. Without a directory, every
 * process may die once. */
static int take_a_death(const point *p) {
    const char *dir = getenv("WARREN_FAILPOINT_DIR");
    if (dir == NULL || dir[0] == '\0') {
        return 1;
    }
    for (long k = 0; k < p->times; k++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s.%ld", dir, p->name, k);
        int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
        if (fd >= 0) {
            close(fd);
            return 1;
        }
    }
    return 0;
}

void warren__failpoint(const char *name) {
    pthread_once(&once, parse_spec);
    for (int i = 0; i < n_points; i++) {
        point *p = &points[i];
        if (strcmp(p->name, name) != 0 || ++p->hits != p->at_hit) {
            continue;
        }
        if (take_a_death(p)) {
            char line[128];
            int len = snprintf(line, sizeof line,
                               "warren: failpoint %s hit, killing pid %ld\n",
                               name, (long)getpid());
            if (len > 0 && write(2, line, (size_t)len) < 0) {
                /* nothing to do: we are about to die anyway */
            }
            kill(getpid(), SIGKILL);
        }
    }
}

#else
/* ISO C forbids an empty translation unit. */
typedef int warren__failpoint_unused;
#endif

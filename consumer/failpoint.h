/*
 * failpoint.h - named crash points for the chaos suite (internal).
 *
 * WARREN_FAILPOINT("name") marks an instant where a crash is dangerous (a
 * claim committed but no handler run yet, an outcome committed but not
 * acked, ...). In a build configured with -DWARREN_FAILPOINTS=ON a test can
 * make the process SIGKILL itself there; in any other build the macro is
 * nothing, so release binaries carry no trace of it.
 *
 * Armed through the environment, read once per process:
 *   WARREN_FAILPOINT="name[:N[:T]][,name...]"
 *     N: die at the Nth hit of `name` in this process (default 1);
 *     T: die at most T times in all, across processes (default 1), counted
 *        with marker files `<name>.<k>` in WARREN_FAILPOINT_DIR, which must
 *        then be set; without it every process may die once.
 * Before dying the process writes "warren: failpoint <name> hit" to stderr,
 * so a test can tell the crash it asked for from any other.
 */
#ifndef WARREN_FAILPOINT_H
#define WARREN_FAILPOINT_H

#ifdef WARREN_FAILPOINTS
void warren__failpoint(const char *name);
#define WARREN_FAILPOINT(name) warren__failpoint(name)
#else
#define WARREN_FAILPOINT(name) ((void)0)
#endif

#endif /* WARREN_FAILPOINT_H */

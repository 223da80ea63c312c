/*
 * pg_fixture.h - a fresh PostgreSQL schema for a test of the PostgreSQL
 * store, on the server WARREN_TEST_PG_URL names (scripts/test starts one).
 * Include after <cmocka.h>. Each suite uses a schema of its own, so suites
 * never see each other's tables.
 */
#ifndef WARREN_TEST_PG_FIXTURE_H
#define WARREN_TEST_PG_FIXTURE_H

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PG_SKIP_MESSAGE                                                        \
    "skipped: WARREN_TEST_PG_URL is not set and scripts/test could not "       \
    "start PostgreSQL\n"

/* Empties (drops and creates) `schema` and writes into url[cap] the
 * server's URL with `schema` as every connection's search_path. Returns 0,
 * or -1 (the skip message printed) if WARREN_TEST_PG_URL is not set; a
 * server error fails the test. */
static inline int pg_fresh_schema(const char *schema, char *url, size_t cap) {
    const char *base = getenv("WARREN_TEST_PG_URL");
    if (base == NULL || base[0] == '\0') {
        printf(PG_SKIP_MESSAGE);
        return -1;
    }
    char sql[256];
    snprintf(sql, sizeof sql,
             "SET client_min_messages = warning; "
             "DROP SCHEMA IF EXISTS %s CASCADE; CREATE SCHEMA %s",
             schema, schema);
    PGconn *c = PQconnectdb(base);
    if (PQstatus(c) != CONNECTION_OK) {
        fail_msg("connect %s: %s", base, PQerrorMessage(c));
    }
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fail_msg("reset schema %s: %s", schema, PQerrorMessage(c));
    }
    PQclear(r);
    PQfinish(c);
    snprintf(url, cap, "%s%soptions=-csearch_path%%3D%s", base,
             strchr(base, '?') ? "&" : "?", schema);
    return 0;
}

#endif /* WARREN_TEST_PG_FIXTURE_H */

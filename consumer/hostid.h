/*
 * hostid.h - the host name a worker's claims carry as their owner (internal).
 *
 * The store judges a claim by its owner: on the owner's own host by whether
 * the owner's pid lives, on any other host by its lease only. That makes the
 * name the unit of "a host". It is gethostname() unless WARREN_HOST_ID says
 * otherwise: several pools on one machine that must behave as separate hosts
 * (the multi-host tests, containers that share a hostname) set it.
 */
#ifndef WARREN_HOSTID_H
#define WARREN_HOSTID_H

#include <stddef.h>

/* The longest WARREN_HOST_ID accepted. */
#define WARREN__HOST_ID_MAX 64

/* Writes this process's host name into `buf` (size `cap`, at least
 * WARREN__HOST_ID_MAX + 1): $WARREN_HOST_ID when set, else gethostname(),
 * else "localhost". Returns 0, or WARREN_ERR_CONFIG when WARREN_HOST_ID is
 * set but not 1-64 characters of [A-Za-z0-9_.:-]; `err` (size `errlen`)
 * then says so and `buf` holds "localhost". Any thread. */
int warren__host_id(char *buf, size_t cap, char *err, size_t errlen);

#endif

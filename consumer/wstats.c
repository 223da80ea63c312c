/*
 * wstats.c - the one computation on a worker's live figures (wstats.h):
 * which latency bucket a handler call falls in.
 */
#include "wstats.h"

void warren__wstats_latency(warren__wstats *s, int64_t us) {
    static const int64_t bounds_ms[] = WARREN__LAT_BOUNDS_MS;
    int b = 0;
    while (b < WARREN__LAT_BUCKETS - 1 && us > bounds_ms[b] * 1000) {
        b++;
    }
    atomic_fetch_add_explicit(&s->latency[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->latency_sum_us, (uint64_t)(us < 0 ? 0 : us),
                              memory_order_relaxed);
}

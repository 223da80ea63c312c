/*
 * props.c - warren's own header tables (props.h): lookup, and the arena
 * that tables, strings and copies of properties are allocated in.
 *
 * The arena behaves as rabbitmq-c's pool did for warren: 8-byte aligned
 * cuts from fixed pages that a recycle keeps, and a block of its own for
 * anything larger than a page, given back at the recycle. Out of memory is
 * a NULL return, never an abort.
 */
#include "props.h"

#include <stdlib.h>
#include <string.h>

warren__bytes warren__cstr_bytes(const char *s) {
    warren__bytes b = {strlen(s), (void *)s};
    return b;
}

const warren__field *warren__table_find(const warren__table *t,
                                        const char *name) {
    if (t == NULL || name == NULL || t->entries == NULL) {
        return NULL;
    }
    size_t n = strlen(name);
    for (int i = 0; i < t->num_entries; i++) {
        const warren__bytes *k = &t->entries[i].key;
        /* Keys are length-counted, not NUL-terminated: compare lengths
         * first so "ab" never matches a lookup of "a". First match wins,
         * as with the broker's own duplicate-key handling. */
        if (k->len == n && (n == 0 || memcmp(k->bytes, name, n) == 0)) {
            return &t->entries[i].value;
        }
    }
    return NULL;
}

void warren__arena_init(warren__arena *a, size_t pagesize) {
    memset(a, 0, sizeof *a);
    a->pagesize = pagesize ? pagesize : 4096;
}

static void free_large(warren__arena *a) {
    for (int i = 0; i < a->n_large; i++) {
        free(a->large[i]);
    }
    a->n_large = 0;
}

void warren__arena_recycle(warren__arena *a) {
    free_large(a);
    a->next_page = 0;
    a->block = NULL;
    a->used = 0;
}

void warren__arena_empty(warren__arena *a) {
    if (a == NULL) {
        return;
    }
    free_large(a);
    free(a->large);
    for (int i = 0; i < a->n_pages; i++) {
        free(a->pages[i]);
    }
    free(a->pages);
    size_t pagesize = a->pagesize;
    memset(a, 0, sizeof *a);
    a->pagesize = pagesize;
}

/* Appends `p` to a growing array of blocks. Returns 0 or -1. */
static int push_block(void ***list, int *n, int *cap, void *p) {
    if (*n == *cap) {
        int c = *cap ? *cap * 2 : 8;
        void **l = realloc(*list, sizeof *l * (size_t)c);
        if (l == NULL) {
            return -1;
        }
        *list = l;
        *cap = c;
    }
    (*list)[(*n)++] = p;
    return 0;
}

void *warren__arena_alloc(warren__arena *a, size_t size) {
    if (size == 0) {
        return NULL;
    }
    if (a->pagesize == 0) {
        a->pagesize = 4096;
    }
    size = (size + 7) & ~(size_t)7;
    if (size > a->pagesize) {
        void *p = malloc(size);
        if (p == NULL ||
            push_block(&a->large, &a->n_large, &a->cap_large, p) != 0) {
            free(p);
            return NULL;
        }
        return p;
    }
    if (a->block != NULL && a->used + size <= a->pagesize) {
        void *p = a->block + a->used;
        a->used += size;
        return p;
    }
    if (a->next_page < a->n_pages) {
        a->block = a->pages[a->next_page++];
    } else {
        char *page = malloc(a->pagesize);
        if (page == NULL ||
            push_block(&a->pages, &a->n_pages, &a->cap_pages, page) != 0) {
            free(page);
            return NULL;
        }
        a->next_page++;
        a->block = page;
    }
    a->used = size;
    return a->block;
}

void warren__arena_alloc_bytes(warren__arena *a, size_t len,
                               warren__bytes *out) {
    out->len = len;
    out->bytes = warren__arena_alloc(a, len);
}

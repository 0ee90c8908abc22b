#define _GNU_SOURCE
#include "dp_bounce.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

#define NCLASSES 40 /* 4 KiB << 39: more than any address space */

struct dp_bounce {
    char *arena;
    size_t size;
    size_t carved; /* arena[0..carved) has been handed out at least once since the last reset */
    size_t in_use;
    size_t peak;
    void *free[NCLASSES]; /* per class, a list threaded through the blocks' first word */
};

static unsigned class_of(size_t len, size_t *size)
{
    unsigned c = 0;

    while (((size_t)1 << (DP_BOUNCE_MIN_SHIFT + c)) < len)
        c++;
    *size = (size_t)1 << (DP_BOUNCE_MIN_SHIFT + c);
    return c;
}

struct dp_bounce *dp_bounce_new(size_t budget, int *err)
{
    struct dp_bounce *b = calloc(1, sizeof(*b));
    size_t size = budget & ~(((size_t)1 << DP_BOUNCE_MIN_SHIFT) - 1);

    if (!b) {
        *err = -ENOMEM;
        return NULL;
    }
    if (!size) {
        free(b);
        *err = -EINVAL;
        return NULL;
    }
    b->arena = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                    -1, 0);
    if (b->arena == MAP_FAILED) {
        *err = -errno;
        free(b);
        return NULL;
    }
    b->size = size;
    *err = 0;
    return b;
}

void dp_bounce_free(struct dp_bounce *b)
{
    if (!b)
        return;
    munmap(b->arena, b->size);
    free(b);
}

size_t dp_bounce_max(const struct dp_bounce *b)
{
    size_t m = (size_t)1 << DP_BOUNCE_MIN_SHIFT;

    while (m * 2 <= b->size && m * 2 > m)
        m *= 2;
    return m;
}

void *dp_bounce_get(struct dp_bounce *b, size_t len, size_t *size)
{
    unsigned c;
    void *p;

    if (len > dp_bounce_max(b))
        return NULL;
    c = class_of(len ? len : 1, size);
    p = b->free[c];
    if (p) {
        b->free[c] = *(void **)p;
    } else {
        if (*size > b->size - b->carved)
            return NULL;
        p = b->arena + b->carved;
        b->carved += *size;
    }
    b->in_use += *size;
    if (b->in_use > b->peak)
        b->peak = b->in_use;
    return p;
}

void dp_bounce_put(struct dp_bounce *b, void *block, size_t size)
{
    size_t s;
    unsigned c = class_of(size, &s);

    b->in_use -= size;
    if (!b->in_use) {
        /* Nothing in use: the whole arena is one free stretch again, whatever was carved. */
        for (unsigned i = 0; i < NCLASSES; i++)
            b->free[i] = NULL;
        b->carved = 0;
        return;
    }
    *(void **)block = b->free[c];
    b->free[c] = block;
}

size_t dp_bounce_in_use(const struct dp_bounce *b)
{
    return b->in_use;
}

size_t dp_bounce_peak(const struct dp_bounce *b)
{
    return b->peak;
}

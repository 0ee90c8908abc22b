/*
 * Bounce memory for one dataplane thread: aligned buffers for requests whose
 * guest buffers O_DIRECT cannot use in place, taken from one arena of
 * `budget` bytes mapped when the thread starts.
 *
 * Blocks are powers of two from 4 KiB, kept on a free list per size once
 * used, and carved from the arena's untouched end otherwise; when nothing is
 * in use the whole arena is free again.  So in steady state a request costs
 * no syscall, and the memory in flight (and the pages ever touched: the
 * arena is MAP_NORESERVE and faults in on use) never exceeds the budget.  A
 * request that does not fit now waits (dp_loop.c): with nothing else in
 * flight every block up to dp_bounce_max() fits.
 */
#ifndef DP_BOUNCE_H
#define DP_BOUNCE_H

#include <stddef.h>
#include <stdint.h>

#define DP_BOUNCE_MIN_SHIFT 12 /* 4 KiB: the O_DIRECT alignment of every device */

struct dp_bounce;

/* NULL on failure, with *err = -errno.  budget is rounded down to a multiple of 4 KiB. */
struct dp_bounce *dp_bounce_new(size_t budget, int *err);
void dp_bounce_free(struct dp_bounce *b);
/* The largest block it can ever hand out: the largest power of two within the budget. */
size_t dp_bounce_max(const struct dp_bounce *b);
/* A 4 KiB-aligned block of at least len bytes (its size in *size), or NULL: not now. */
void *dp_bounce_get(struct dp_bounce *b, size_t len, size_t *size);
void dp_bounce_put(struct dp_bounce *b, void *block, size_t size);
size_t dp_bounce_in_use(const struct dp_bounce *b);
size_t dp_bounce_peak(const struct dp_bounce *b); /* the most ever in use at once */

#endif

/*
 * The bench driver's latency histogram: log-linear, 2^DP_HIST_SUB_BITS
 * buckets per power of two (~1.6%).  dataplane/bench/hist.py reads it.
 */
#ifndef DP_HIST_H
#define DP_HIST_H

#include <stdint.h>

#define DP_HIST_SUB_BITS 6
#define DP_HIST_BUCKETS ((64 - DP_HIST_SUB_BITS + 1) << DP_HIST_SUB_BITS)

/* Inline: the driver counts every completion (dp_drv_complete, another file). */
static inline unsigned dp_hist_index(uint64_t v)
{
    const unsigned sub = 1u << DP_HIST_SUB_BITS;
    unsigned msb, shift;

    if (v < sub)
        return (unsigned)v;
    msb = 63 - (unsigned)__builtin_clzll(v);
    shift = msb - DP_HIST_SUB_BITS;
    return ((shift + 1) << DP_HIST_SUB_BITS) + (unsigned)((v >> shift) & (sub - 1));
}

#endif

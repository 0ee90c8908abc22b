/*
 * Log-linear histogram buckets, shared by the device's layer histograms
 * (dp_stats.h) and the bench driver's (dp_hist.h): 2^sub_bits buckets per
 * power of two, values below 2^sub_bits one bucket each.  Bucket i's range
 * is dataplane/spec/loglin.py bucket_range(i, sub_bits).
 */
#ifndef DP_LOGLIN_H
#define DP_LOGLIN_H

#include <stdint.h>

/* The number of buckets that covers every uint64_t with sub_bits. */
#define DP_LOGLIN_BUCKETS(sub_bits) ((64 - (sub_bits) + 1) << (sub_bits))

static inline unsigned dp_loglin_index(uint64_t v, unsigned sub_bits)
{
    const unsigned sub = 1u << sub_bits;
    unsigned msb, shift;

    if (v < sub)
        return (unsigned)v;
    msb = 63 - (unsigned)__builtin_clzll(v);
    shift = msb - sub_bits;
    return ((shift + 1) << sub_bits) + (unsigned)((v >> shift) & (sub - 1));
}

#endif

/*
 * The bench driver's latency histogram: log-linear, 2^DP_HIST_SUB_BITS
 * buckets per power of two (~1.6%).  dataplane/guest/bench/hist.py reads it.
 */
#ifndef DP_HIST_H
#define DP_HIST_H

#include <stdint.h>

#include "dp_loglin.h"

#define DP_HIST_SUB_BITS 6
#define DP_HIST_BUCKETS DP_LOGLIN_BUCKETS(DP_HIST_SUB_BITS)

/* Inline: the driver counts every completion (dp_drv_complete, another file). */
static inline unsigned dp_hist_index(uint64_t v)
{
    return dp_loglin_index(v, DP_HIST_SUB_BITS);
}

#endif

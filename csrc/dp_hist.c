#include "dp_hist.h"

unsigned dp_hist_index(uint64_t v)
{
    const unsigned sub = 1u << DP_HIST_SUB_BITS;
    unsigned msb, shift;

    if (v < sub)
        return (unsigned)v;
    msb = 63 - (unsigned)__builtin_clzll(v);
    shift = msb - DP_HIST_SUB_BITS;
    return ((shift + 1) << DP_HIST_SUB_BITS) + (unsigned)((v >> shift) & (sub - 1));
}

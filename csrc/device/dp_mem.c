#include "dp_mem.h"

int dp_mem_contiguous(const struct dp_mem *m, uint64_t gpa, uint64_t len, uint64_t *host)
{
    const struct dp_mem_region *r;
    uint64_t span = len ? len : 1;

    if (gpa + (span - 1) < gpa)
        return DP_MEM_WRAPS;
    r = dp_mem_find(m, gpa);
    if (!r)
        return DP_MEM_UNMAPPED;
    if (len > r->size - (gpa - r->gpa))
        return DP_MEM_CROSSES;
    *host = r->host + (gpa - r->gpa);
    return 0;
}

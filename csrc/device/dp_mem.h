/*
 * Guest memory as the C data path sees it: a table of regions, each a
 * guest-physical range and the host address it is mapped at.
 *
 * Python maps the regions (and checks them against their fds) and hands the
 * table over while the thread is idle; C only translates.  Every translation
 * checks the whole range, including 64-bit wrap-around, exactly as
 * dataplane/device/memory.py does.
 */
#ifndef DP_MEM_H
#define DP_MEM_H

#include <stdint.h>

struct dp_mem_region {
    uint64_t gpa;
    uint64_t size;
    uint64_t host;
};

struct dp_mem {
    uint32_t nregions;
    struct dp_mem_region *regions; /* sorted by gpa, non-overlapping */
};

/* The region holding guest address gpa, or NULL (GuestMemory._find_gpa). */
static inline const struct dp_mem_region *dp_mem_find(const struct dp_mem *m, uint64_t gpa)
{
    for (uint32_t i = 0; i < m->nregions; i++) {
        const struct dp_mem_region *r = &m->regions[i];
        if (r->gpa <= gpa && gpa - r->gpa < r->size)
            return r;
    }
    return 0;
}

/* The region whose mapping holds host address host, or NULL (for the dirty log). */
static inline const struct dp_mem_region *dp_mem_find_host(const struct dp_mem *m, uint64_t host)
{
    for (uint32_t i = 0; i < m->nregions; i++) {
        const struct dp_mem_region *r = &m->regions[i];
        if (r->host <= host && host - r->host < r->size)
            return r;
    }
    return 0;
}

/*
 * Host address of [gpa, gpa+len), which must lie inside one region
 * (GuestMemory.gpa_contiguous: ring structures and indirect tables).
 * 0 on success, else why not: DP_MEM_WRAPS, DP_MEM_UNMAPPED (gpa is in no
 * region) or DP_MEM_CROSSES (the range runs past its region's end).
 */
enum { DP_MEM_WRAPS = -1, DP_MEM_UNMAPPED = -2, DP_MEM_CROSSES = -3 };

int dp_mem_contiguous(const struct dp_mem *m, uint64_t gpa, uint64_t len, uint64_t *host);

#endif

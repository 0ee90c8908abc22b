#define _GNU_SOURCE
#include "dp_inflight.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/*
 * Stores into the area.  Each ordered one is a release store: every store
 * before it in program order is made before it.  A kill may land between any
 * two of them, and the next backend reads exactly the prefix we made.
 */
void dp_inflight_store8_release(uintptr_t addr, uint8_t value)
{
    __atomic_store_n((uint8_t *)addr, value, __ATOMIC_RELEASE);
}

void dp_inflight_store16_release(uintptr_t addr, uint16_t value)
{
    __atomic_store_n((uint16_t *)addr, value, __ATOMIC_RELEASE);
}

/* Plain accesses to the shared area, once each (the frontend may write it under us). */
static inline uint16_t area_read16(const void *p)
{
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED);
}

static inline uint8_t area_read8(const void *p)
{
    return __atomic_load_n((const uint8_t *)p, __ATOMIC_RELAXED);
}

static inline uint64_t area_read64(const void *p)
{
    return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
}

static inline void area_write16(void *p, uint16_t v)
{
    __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELAXED);
}

static inline void area_write64(void *p, uint64_t v)
{
    __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELAXED);
}

static inline struct dp_inflight_split *area(const struct dp_inflight *f)
{
    return (struct dp_inflight_split *)f->region;
}

int dp_inflight_memfd(uint64_t size)
{
    int fd = memfd_create("dataplane-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    int err;

    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

int dp_inflight_check(uintptr_t region, uint32_t queue_size)
{
    const struct dp_inflight_split *a = (const struct dp_inflight_split *)region;
    uint16_t version = area_read16(&a->version);

    if (version == 0)
        return 0; /* never initialised: recovery starts it afresh */
    if (version != DP_INFLIGHT_VERSION)
        return -DP_INFLIGHT_EVERSION;
    if (area_read64(&a->features) != 0)
        return -DP_INFLIGHT_EFEATURES;
    if (area_read16(&a->desc_num) != queue_size)
        return -DP_INFLIGHT_EDESCNUM;
    return 0;
}

void dp_inflight_attach(struct dp_inflight *f, uintptr_t region, uint32_t desc_num)
{
    f->region = region;
    f->desc_num = desc_num;
    f->batch = 0;
    f->counter = 0;
}

void dp_inflight_get(struct dp_inflight *f, uint16_t head)
{
    struct dp_inflight_desc *d;

    if (!f->region || head >= f->desc_num)
        return;
    d = &area(f)->desc[head];
    area_write64(&d->counter, f->counter++);
    /*
     * The counter, then the flag: the "resubmitted out of order" race.  A head
     * marked in flight with its previous counter would be resubmitted in the
     * wrong place after a kill between the two stores.
     */
    dp_inflight_store8_release((uintptr_t)&d->inflight, 1);
}

void dp_inflight_pre_put(struct dp_inflight *f, uint16_t head)
{
    struct dp_inflight_split *a;

    if (!f->region || head >= f->desc_num)
        return;
    a = area(f);
    area_write16(&a->desc[head].next, area_read16(&a->last_batch_head));
    /*
     * next, then last_batch_head, and both before used->idx is published (the
     * release store in dp_vq_flush_used orders them): the "lost batch" race.
     * If the guest could see the batch while last_batch_head still pointed
     * into the previous one, recovery after a kill would clear the wrong
     * entries and resubmit requests the guest already saw complete.
     */
    dp_inflight_store16_release((uintptr_t)&a->last_batch_head, head);
    f->batch++;
}

void dp_inflight_post_put(struct dp_inflight *f, uint16_t used_idx)
{
    struct dp_inflight_split *a;
    uint32_t i = 0;
    uint16_t h;

    if (!f->region)
        return;
    a = area(f);
    h = area_read16(&a->last_batch_head);
    while (i < f->batch && h < f->desc_num) {
        uint16_t next = area_read16(&a->desc[h].next);
        /*
         * Cleared only now that used->idx is published (release: the
         * publication cannot move below it): the "lost request" race.  A flag
         * cleared before the guest can see the completion, then a kill, and
         * nobody ever completes the request: the guest waits forever.
         */
        dp_inflight_store8_release((uintptr_t)&a->desc[h].inflight, 0);
        h = next;
        i++;
    }
    /*
     * used_idx last, after every flag of the batch: the "stale batch" race.
     * If used_idx matched used->idx with flags still set, recovery would skip
     * the batch walk and run those completed requests a second time.
     */
    dp_inflight_store16_release((uintptr_t)&a->used_idx, used_idx);
    f->batch = 0;
}

struct pending {
    uint64_t counter;
    uint16_t head;
};

static int by_counter(const void *x, const void *y)
{
    const struct pending *a = x, *b = y;

    if (a->counter != b->counter)
        return a->counter < b->counter ? -1 : 1;
    return a->head < b->head ? -1 : a->head > b->head;
}

/* A new area: no record yet.  Everything zero, then the version (the record is valid). */
static void initialise(struct dp_inflight *f, uint16_t used_idx)
{
    struct dp_inflight_split *a = area(f);

    memset(a->desc, 0, (size_t)f->desc_num * sizeof(a->desc[0]));
    area_write64(&a->features, 0);
    area_write16(&a->desc_num, (uint16_t)f->desc_num);
    area_write16(&a->last_batch_head, 0);
    area_write16(&a->used_idx, used_idx);
    dp_inflight_store16_release((uintptr_t)&a->version, DP_INFLIGHT_VERSION);
}

int dp_inflight_recover(struct dp_inflight *f, uint16_t used_idx, uint32_t num, uint16_t *heads,
                        struct dp_inflight_recovery *out)
{
    struct dp_inflight_split *a = area(f);
    struct pending *p;
    uint16_t version = area_read16(&a->version);
    uint16_t batch = (uint16_t)(used_idx - area_read16(&a->used_idx));
    uint32_t n = 0;

    memset(out, 0, sizeof(*out));
    out->used_idx = used_idx;
    f->batch = 0;
    f->counter = 0;
    if (num > f->desc_num)
        return -DP_INFLIGHT_ESIZE;
    if (version == 0) {
        initialise(f, used_idx);
        out->fresh = 1;
        return 0;
    }
    if (version != DP_INFLIGHT_VERSION)
        return -DP_INFLIGHT_EVERSION;
    if (area_read16(&a->desc_num) != f->desc_num)
        return -DP_INFLIGHT_EDESCNUM;
    /* A batch published as used but not yet recorded: its heads completed. */
    if (batch) {
        uint16_t h = area_read16(&a->last_batch_head);

        if (batch > num)
            return -DP_INFLIGHT_EBATCH;
        for (uint32_t i = 0; i < batch; i++) {
            if (h >= num)
                return -DP_INFLIGHT_ELINK;
            dp_inflight_store8_release((uintptr_t)&a->desc[h].inflight, 0);
            h = area_read16(&a->desc[h].next);
        }
        out->batch_cleared = batch;
        dp_inflight_store16_release((uintptr_t)&a->used_idx, used_idx);
    }
    p = malloc((num ? num : 1) * sizeof(*p));
    if (!p)
        return -DP_INFLIGHT_ENOMEM;
    /* Snapshot (head, counter) once, so that the sort sees values that cannot change. */
    for (uint32_t i = 0; i < f->desc_num; i++) {
        uint8_t flag = area_read8(&a->desc[i].inflight);

        if (flag == 0)
            continue;
        if (flag != 1 || i >= num) {
            free(p);
            return flag != 1 ? -DP_INFLIGHT_EFLAG : -DP_INFLIGHT_EHEAD;
        }
        p[n].counter = area_read64(&a->desc[i].counter);
        p[n].head = (uint16_t)i;
        n++;
    }
    qsort(p, n, sizeof(*p), by_counter);
    for (uint32_t i = 0; i < n; i++)
        heads[i] = p[i].head;
    /* New pops come after every resubmitted one. */
    f->counter = n ? p[n - 1].counter + 1 : 0;
    free(p);
    out->nheads = n;
    out->last_avail_idx = (uint16_t)(used_idx + n);
    return 0;
}

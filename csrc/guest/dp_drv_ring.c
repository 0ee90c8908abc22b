#include "dp_drv_ring.h"

#include <errno.h>

/* [gpa, gpa + len) inside RAM, without wrapping. */
static int in_ram(uint64_t ram_gpa, uint64_t ram_size, uint64_t gpa, uint64_t len)
{
    return gpa >= ram_gpa && gpa - ram_gpa <= ram_size && len <= ram_size - (gpa - ram_gpa);
}

int dp_drv_ring_init(struct dp_drv_ring *r, uintptr_t ram_host, uint64_t ram_gpa,
                     uint64_t ram_size, uint64_t desc_gpa, uint64_t avail_gpa, uint64_t used_gpa,
                     uint32_t num, uint32_t event_idx)
{
    if (!num || num > 32768 || num & (num - 1))
        return -EINVAL;
    if (!in_ram(ram_gpa, ram_size, desc_gpa, (uint64_t)VRING_DESC_SIZE * num) ||
        !in_ram(ram_gpa, ram_size, avail_gpa, VRING_USED_EVENT(num) + 2u) ||
        !in_ram(ram_gpa, ram_size, used_gpa, VRING_AVAIL_EVENT(num) + 2u))
        return -ERANGE;
    memset(r, 0, sizeof(*r));
    r->ram_host = ram_host;
    r->ram_gpa = ram_gpa;
    r->ram_size = ram_size;
    r->num = num;
    r->event_idx = event_idx;
    r->desc = dp_drv_ring_host(r, desc_gpa);
    r->avail = dp_drv_ring_host(r, avail_gpa);
    r->used = dp_drv_ring_host(r, used_gpa);
    r->avail_idx = *(volatile uint16_t *)(r->avail + VRING_AVAIL_IDX);
    r->last_used_idx = *(volatile uint16_t *)(r->used + VRING_USED_IDX);
    return 0;
}

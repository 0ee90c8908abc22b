#include "dp_vq.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp_barrier.h"
#include "dp_virtio.h"

#define DESC_SIZE VRING_DESC_SIZE
#define U32_MAX 0xffffffffull

/*
 * Copy guest bytes into a local, then a compiler barrier: the compiler may
 * not re-read guest memory later in place of the local, so a value checked
 * is the value used even while the guest rewrites it (no double fetch).
 * memcpy also copes with the misaligned addresses a hostile guest may give.
 */
static inline void guest_read(void *dst, uintptr_t src, size_t n)
{
    memcpy(dst, (const void *)src, n);
    __asm__ __volatile__("" ::: "memory");
}

static inline uint16_t guest_read16(uintptr_t src)
{
    uint16_t v;
    guest_read(&v, src, sizeof(v));
    return v;
}

static inline void guest_write16(uintptr_t dst, uint16_t v)
{
    memcpy((void *)dst, &v, sizeof(v));
}

static int fail(struct dp_vq *vq, enum dp_gerr code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct dp_vq *vq, enum dp_gerr code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(vq->err, sizeof(vq->err), fmt, ap);
    va_end(ap);
    return -(int)code;
}

void dp_vq_init(struct dp_vq *vq, uint32_t num, uintptr_t desc, uintptr_t avail, uintptr_t used,
                uint16_t last_avail_idx, int event_idx, int indirect, uint32_t max_indirect)
{
    memset(vq, 0, sizeof(*vq));
    vq->num = num;
    vq->desc = desc;
    vq->avail = avail;
    vq->used = used;
    vq->event_idx = (uint8_t)!!event_idx;
    vq->indirect = (uint8_t)!!indirect;
    vq->max_indirect = max_indirect;
    vq->last_avail_idx = last_avail_idx;
    vq->shadow_avail_idx = last_avail_idx;
    /* Resume from what the driver can see: requests before used->idx are complete. */
    vq->used_idx = guest_read16(used + VRING_USED_IDX);
    vq->signalled_used = vq->used_idx;
    vq->signalled_used_valid = 0;
}

/* Read avail->idx (acquire) and check it against last_avail_idx. */
static int avail_idx(struct dp_vq *vq, uint16_t *out)
{
    uint16_t idx = dp_avail_idx_acquire(vq->avail + VRING_AVAIL_IDX);
    uint16_t ahead = (uint16_t)(idx - vq->last_avail_idx);

    if (ahead > vq->num)
        return fail(vq, DP_GERR_AVAIL_IDX_JUMP,
                    "avail idx %u is %u past last_avail_idx %u, queue size %u", idx, ahead,
                    vq->last_avail_idx, vq->num);
    vq->shadow_avail_idx = idx;
    *out = idx;
    return 0;
}

int dp_vq_peek(const struct dp_vq *vq)
{
    return vq->shadow_avail_idx != vq->last_avail_idx ||
           __atomic_load_n((const uint16_t *)(vq->avail + VRING_AVAIL_IDX), __ATOMIC_RELAXED) !=
               vq->last_avail_idx;
}

static int chain_reserve(struct dp_chain *c, uint32_t more)
{
    uint32_t need = c->nout + c->nin + more;
    struct dp_iovec *iov;
    uint32_t cap;

    if (need <= c->cap)
        return 0;
    cap = c->cap ? c->cap : 16;
    while (cap < need)
        cap *= 2;
    iov = realloc(c->iov, cap * sizeof(*iov));
    if (!iov)
        return -1;
    c->iov = iov;
    c->cap = cap;
    return 0;
}

void dp_chain_free(struct dp_chain *c)
{
    free(c->iov);
    c->iov = NULL;
    c->cap = 0;
}

/* GuestMemory.gpa_segments: append the pieces covering [gpa, gpa+len). */
static int add_segments(struct dp_vq *vq, const struct dp_mem *mem, struct dp_chain *c,
                        uint64_t gpa, uint64_t len, int writable)
{
    if (!len)
        return 0;
    if (gpa + (len - 1) < gpa)
        return fail(vq, DP_GERR_ADDRESS_OUT_OF_RANGE, "range 0x%" PRIx64 "+0x%" PRIx64 " wraps",
                    gpa, len);
    while (len) {
        const struct dp_mem_region *r = dp_mem_find(mem, gpa);
        uint64_t off, n;

        if (!r)
            return fail(vq, DP_GERR_ADDRESS_OUT_OF_RANGE,
                        "guest address 0x%" PRIx64 " is not in guest RAM", gpa);
        if (chain_reserve(c, 1))
            return fail(vq, DP_GERR_NO_MEMORY, "out of memory for a chain of %u pieces",
                        c->nout + c->nin + 1);
        off = gpa - r->gpa;
        n = len < r->size - off ? len : r->size - off;
        c->iov[c->nout + c->nin] = (struct dp_iovec){r->host + off, n};
        if (writable)
            c->nin++;
        else
            c->nout++;
        gpa += n;
        len -= n;
    }
    return 0;
}

/* SplitQueue._add_buffer: the length checks come before the address checks. */
static int add_buffer(struct dp_vq *vq, const struct dp_mem *mem, struct dp_chain *c,
                      const struct vring_desc_le *d)
{
    c->ndesc++;
    if (d->len > c->longest)
        c->longest = d->len;
    if (d->flags & VRING_DESC_F_WRITE) {
        c->in_len += d->len;
        if (c->in_len > U32_MAX)
            return fail(vq, DP_GERR_LENGTH_OVERFLOW, "device-writable length exceeds 2**32-1");
        return add_segments(vq, mem, c, d->addr, d->len, 1);
    }
    /* As the reference: a zero-length writable descriptor leaves no piece behind. */
    if (c->nin)
        return fail(vq, DP_GERR_BAD_LAYOUT,
                    "device-readable descriptor after a device-writable one");
    c->out_len += d->len;
    if (c->out_len > U32_MAX)
        return fail(vq, DP_GERR_LENGTH_OVERFLOW, "device-readable length exceeds 2**32-1");
    return add_segments(vq, mem, c, d->addr, d->len, 0);
}

static int contiguous_error(struct dp_vq *vq, int why, uint64_t gpa, uint64_t len)
{
    if (why == DP_MEM_UNMAPPED)
        return fail(vq, DP_GERR_ADDRESS_OUT_OF_RANGE,
                    "guest address 0x%" PRIx64 " is not in guest RAM", gpa);
    return fail(vq, DP_GERR_ADDRESS_OUT_OF_RANGE, "range 0x%" PRIx64 "+0x%" PRIx64 " %s", gpa,
                len, why == DP_MEM_WRAPS ? "wraps" : "crosses a region end");
}

static void report_desc(const struct dp_vq *vq, const char *where, uint16_t at,
                        const struct vring_desc_le *d)
{
    vq->events->descriptor(vq->events_ctx, where, at, d->addr, d->len, d->flags, d->next);
}

static int read_chain(struct dp_vq *vq, const struct dp_mem *mem, struct dp_chain *c,
                      uint16_t head)
{
    struct vring_desc_le d;
    uintptr_t table = vq->desc;
    uint32_t size = vq->num, steps = 0;
    uint16_t at = head; /* the descriptor's index in its table, for vq->events */
    int in_table = 0, ret;

    c->head = head;
    c->out_len = c->in_len = 0;
    c->nout = c->nin = 0;
    c->ndesc = c->longest = 0;
    if (head >= vq->num)
        return fail(vq, DP_GERR_BAD_HEAD_INDEX, "head %u >= queue size %u", head, vq->num);
    guest_read(&d, table + DESC_SIZE * head, sizeof(d));
    if (d.flags & VRING_DESC_F_INDIRECT) {
        uint64_t host;

        if (vq->events)
            report_desc(vq, "desc", head, &d);

        if (!vq->indirect)
            return fail(vq, DP_GERR_UNEXPECTED_INDIRECT,
                        "indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC");
        if (d.flags & VRING_DESC_F_NEXT)
            return fail(vq, DP_GERR_UNEXPECTED_INDIRECT, "indirect descriptor with NEXT set");
        if (d.len == 0 || d.len % DESC_SIZE || d.len / DESC_SIZE > vq->max_indirect)
            return fail(vq, DP_GERR_BAD_INDIRECT_LENGTH,
                        "indirect table length %u is not a non-zero multiple of %u up to %u "
                        "entries",
                        d.len, DESC_SIZE, vq->max_indirect);
        ret = dp_mem_contiguous(mem, d.addr, d.len, &host);
        if (ret)
            return contiguous_error(vq, ret, d.addr, d.len);
        table = (uintptr_t)host;
        size = d.len / DESC_SIZE;
        if (vq->events)
            vq->events->indirect_table(vq->events_ctx, d.addr, size);
        guest_read(&d, table, sizeof(d));
        in_table = 1;
        at = 0;
    }
    for (;;) {
        if (++steps > size)
            return fail(vq, DP_GERR_CHAIN_TOO_LONG,
                        "chain from head %u is longer than its table (%u)", head, size);
        if (vq->events)
            report_desc(vq, in_table ? "indirect" : "desc", at, &d);
        if (d.flags & VRING_DESC_F_INDIRECT) {
            if (in_table)
                return fail(vq, DP_GERR_NESTED_INDIRECT,
                            "indirect descriptor inside an indirect table");
            return fail(vq, DP_GERR_UNEXPECTED_INDIRECT,
                        "indirect descriptor in the middle of a chain");
        }
        ret = add_buffer(vq, mem, c, &d);
        if (ret)
            return ret;
        if (!(d.flags & VRING_DESC_F_NEXT))
            return 1;
        if (d.next >= size)
            return fail(vq, DP_GERR_BAD_NEXT_INDEX, "next %u >= table size %u", d.next, size);
        at = d.next;
        guest_read(&d, table + DESC_SIZE * d.next, sizeof(d));
    }
}

int dp_vq_pop(struct dp_vq *vq, const struct dp_mem *mem, struct dp_chain *c)
{
    uint16_t idx = 0, head;
    int ret;

    if (vq->shadow_avail_idx == vq->last_avail_idx) {
        ret = avail_idx(vq, &idx);
        if (ret)
            return ret;
        if (idx == vq->last_avail_idx)
            return 0;
    }
    head = guest_read16(vq->avail + VRING_AVAIL_RING(vq->last_avail_idx % vq->num));
    if (vq->events)
        vq->events->popped(vq->events_ctx, vq->shadow_avail_idx, vq->last_avail_idx, head);
    vq->last_avail_idx++;
    return read_chain(vq, mem, c, head);
}

int dp_vq_map_desc(struct dp_vq *vq, const struct dp_mem *mem, struct dp_chain *c, uint16_t head)
{
    return read_chain(vq, mem, c, head);
}

void dp_vq_add_used(struct dp_vq *vq, uint16_t head, uint32_t len)
{
    uint32_t elem[2] = {head, len};

    memcpy((void *)(vq->used + VRING_USED_RING(vq->used_idx % vq->num)), elem, sizeof(elem));
    vq->used_idx++;
}

void dp_vq_flush_used(struct dp_vq *vq)
{
    dp_used_idx_release(vq->used + VRING_USED_IDX, vq->used_idx);
}

int dp_vq_should_notify(struct dp_vq *vq)
{
    /*
     * used->idx was just published; used_event / avail->flags are read after
     * it.  The full fence orders that store before these loads, or the driver
     * may miss our new used->idx while we read its stale used_event and skip
     * the interrupt it was about to ask for: the missed-interrupt race.
     */
    dp_smp_mb();
    if (vq->event_idx) {
        uint16_t old = vq->signalled_used;
        int valid = vq->signalled_used_valid;
        uint16_t used_event = guest_read16(vq->avail + VRING_USED_EVENT(vq->num));

        int need = !valid || vring_need_event(used_event, vq->used_idx, old);

        vq->signalled_used = vq->used_idx;
        vq->signalled_used_valid = 1;
        if (vq->events)
            vq->events->notify_event_idx(vq->events_ctx, vq->used_idx, used_event, old, valid,
                                         need);
        return need;
    }
    {
        uint16_t flags = guest_read16(vq->avail);
        int need = !(flags & VRING_AVAIL_F_NO_INTERRUPT);

        if (vq->events)
            vq->events->notify_flags(vq->events_ctx, vq->used_idx, flags, need);
        return need;
    }
}

void dp_vq_disable_notification(struct dp_vq *vq)
{
    /* With EVENT_IDX, an avail_event left behind asks for nothing new. */
    if (!vq->event_idx)
        guest_write16(vq->used, VRING_USED_F_NO_NOTIFY);
}

int dp_vq_enable_notification(struct dp_vq *vq)
{
    uint16_t idx = 0;
    int ret;

    if (vq->event_idx)
        guest_write16(vq->used + VRING_AVAIL_EVENT(vq->num), vq->last_avail_idx);
    else
        guest_write16(vq->used, 0);
    /*
     * avail_event (or the cleared VRING_USED_F_NO_NOTIFY) must be visible
     * before we re-read avail->idx: otherwise the driver may publish an
     * entry, read our old avail_event (or the flag), decide not to kick,
     * while we read the old avail->idx and go to sleep: the missed-kick race.
     */
    dp_smp_mb();
    ret = avail_idx(vq, &idx);
    if (ret)
        return ret;
    return idx != vq->last_avail_idx;
}

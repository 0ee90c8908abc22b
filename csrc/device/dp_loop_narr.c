#include "dp_loop_narr.h"

#include <inttypes.h>
#include <stdio.h>

#include "dp_loop.h"
#include "dp_narr.h"


static void commit_request(struct dp_thread *t, unsigned index, uint32_t seq)
{
    char prefix[48];

    snprintf(prefix, sizeof(prefix), "trace #%u q%u: ", seq, index);
    dp_narr_commit(&t->narr, prefix);
}

/* -- the ring's steps, as the ring reports them (struct dp_vq_events) -- */

/* "desc[3]: gpa 0x... len 16 flags NEXT next 4" (the Python reference's wording). */
static void ring_descriptor(void *ctx, const char *where, uint16_t at, uint64_t addr,
                            uint32_t len, uint16_t flags, uint16_t next)
{
    char words[48];

    dp_narr_desc_flags(flags, words, sizeof(words));
    if (flags & VRING_DESC_F_NEXT)
        dp_narr_add(ctx, "  %s[%u]: gpa 0x%" PRIx64 " len %u flags %s next %u", where, at, addr,
                    len, words, next);
    else
        dp_narr_add(ctx, "  %s[%u]: gpa 0x%" PRIx64 " len %u flags %s", where, at, addr, len,
                    words);
}

static void ring_popped(void *ctx, uint16_t avail_idx, uint16_t last_avail_idx, uint16_t head)
{
    dp_narr_add(ctx, "pop: avail idx %u, last_avail_idx %u: head %u", avail_idx, last_avail_idx,
                head);
}

static void ring_indirect_table(void *ctx, uint64_t addr, uint32_t count)
{
    dp_narr_add(ctx, "  indirect table at gpa 0x%" PRIx64 ": %u descriptors", addr, count);
}

static void ring_notify_event_idx(void *ctx, uint16_t used_idx, uint16_t used_event, uint16_t old,
                                  int valid, int need)
{
    if (!valid)
        dp_narr_add(ctx,
                    "used idx %u published; EVENT_IDX: used_event %u, first signal since "
                    "the ring started: notify",
                    used_idx, used_event);
    else
        dp_narr_add(ctx,
                    "used idx %u published; EVENT_IDX: used_event %u, "
                    "vring_need_event(%u, new %u, old %u) is %s: %s",
                    used_idx, used_event, used_event, used_idx, old, need ? "true" : "false",
                    need ? "notify" : "no notify");
}

static void ring_notify_flags(void *ctx, uint16_t used_idx, uint16_t flags, int need)
{
    dp_narr_add(ctx, "used idx %u published; avail flags 0x%x%s: %s", used_idx, flags,
                need ? "" : " (VRING_AVAIL_F_NO_INTERRUPT)", need ? "notify" : "no notify");
}

const struct dp_vq_events dp_loop_ring_narrator = {
    .popped = ring_popped,
    .descriptor = ring_descriptor,
    .indirect_table = ring_indirect_table,
    .notify_event_idx = ring_notify_event_idx,
    .notify_flags = ring_notify_flags,
};

/* -- the loop's own steps -- */

uint32_t dp_loop_narrate_pop(struct dp_thread *t, unsigned index)
{
    uint32_t seq = (uint32_t)dp_budget_take(t->trace);

    if (seq) {
        commit_request(t, index, seq);
    } else {
        dp_narr_drop(&t->narr);
        t->trace = NULL;
    }
    return seq;
}


void dp_loop_narrate_parsed(struct dp_thread *t, unsigned index, const struct dp_req *r)
{
    static const char *const ops[] = {"read", "write", "flush", "discard", "write-zeroes"};
    const struct dp_io *io = &r->io;
    struct dp_narr *n = &t->narr;

    dp_narr_add(n, "header: type %u (%s), sector %" PRIu64, r->type, dp_narr_type_name(r->type),
                r->sector);
    if (!r->has_io)
        dp_narr_add(n, "no I/O: status %u (%s), used len %u", r->status,
                    dp_narr_status_name(r->status), r->used_len);
    else if (io->op == DP_OP_READ || io->op == DP_OP_WRITE)
        dp_narr_add(n, "I/O: %s %" PRIu64 " bytes at offset %" PRIu64 " in %u iovec(s)%s%s",
                    ops[io->op], io->length, io->offset, io->iovcnt,
                    r->bounce_len ? " via a bounce buffer" : "",
                    io->flags & DP_IO_DSYNC ? " (write-through)" : "");
    else if (io->op == DP_OP_FLUSH)
        dp_narr_add(n, "I/O: flush");
    else
        dp_narr_add(n, "I/O: %s %" PRIu64 " bytes at offset %" PRIu64 "%s", ops[io->op],
                    io->length, io->offset, io->flags & DP_IO_UNMAP ? " (may unmap)" : "");
    commit_request(t, index, r->trace_seq);
}


void dp_loop_narrate_submitted(struct dp_thread *t)
{
    for (unsigned i = 0; i < t->nbatch; i++) {
        const struct dp_req *r = (const struct dp_req *)(uintptr_t)t->batch[i]->token;

        if (r->trace_seq) {
            dp_narr_add(&t->narr, "submitted: in a batch of %u request(s), one engine call",
                        t->nbatch);
            commit_request(t, r->queue, r->trace_seq);
        }
    }
}

void dp_loop_narrate_complete(struct dp_thread *t, unsigned index, const struct dp_req *req,
                              int64_t result, int has_result, uint16_t used_at)
{
    if (has_result)
        dp_narr_add(&t->narr,
                    "complete: result %" PRId64 ", status %u (%s); add_used(id %u, len %u) "
                    "at used idx %u",
                    result, req->status, dp_narr_status_name(req->status), req->head,
                    req->used_len, used_at);
    else
        dp_narr_add(&t->narr, "complete: status %u (%s); add_used(id %u, len %u) at used "
                    "idx %u", req->status, dp_narr_status_name(req->status), req->head,
                    req->used_len, used_at);
    commit_request(t, index, req->trace_seq);
}

void dp_loop_narrate_released(struct dp_thread *t, unsigned index, const struct dp_req *req)
{
    dp_narr_add(&t->narr, "complete: queue broken, released without touching guest memory");
    commit_request(t, index, req->trace_seq);
}

void dp_loop_narrate_notify(struct dp_thread *t, unsigned index, int need)
{
    char prefix[32];

    if (need)
        dp_narr_add(&t->narr, "signal_used: %s",
                    t->queues[index].call_fd >= 0 ? "call eventfd written" : "no call fd set");
    snprintf(prefix, sizeof(prefix), "trace q%u: ", index);
    dp_narr_commit(&t->narr, prefix);
}

/*
 * The split virtqueue (virtio 1.2, section 2.7), device side, in C.
 *
 * This is dataplane/device/virtqueue.py line for line: the same state, the same
 * checks in the same order, and one error code per GuestError subclass, so
 * that both paths break a queue on the same input with the same class.
 * Every value read from guest memory is read once into a local.
 */
#ifndef DP_VQ_H
#define DP_VQ_H

#include <stdint.h>

#include "dp_io.h"
#include "dp_mem.h"

/*
 * One per dataplane.errors.GuestError subclass, but DP_GERR_NO_MEMORY: the host's failure,
 * which device/c/thread.py raises as MemoryError.
 */
enum dp_gerr {
    DP_GERR_NONE = 0,
    DP_GERR_AVAIL_IDX_JUMP,
    DP_GERR_BAD_HEAD_INDEX,
    DP_GERR_BAD_NEXT_INDEX,
    DP_GERR_CHAIN_TOO_LONG,
    DP_GERR_NESTED_INDIRECT,
    DP_GERR_UNEXPECTED_INDIRECT,
    DP_GERR_BAD_INDIRECT_LENGTH,
    DP_GERR_ADDRESS_OUT_OF_RANGE,
    DP_GERR_LENGTH_OVERFLOW,
    DP_GERR_BAD_LAYOUT,
    DP_GERR_BAD_HEADER,
    DP_GERR_BAD_STATUS,
    DP_GERR_NO_MEMORY,
    DP_GERR_KICK_FD, /* the frontend's kick fd hung up or failed (not guest input) */
    DP_GERR_DIRTY_LOG, /* a page to log lies past the frontend's dirty log (not guest input) */
};

#define DP_ERRMSG_SIZE 160

/*
 * What a ring reports, while vq->events is set, of the values it read.  The
 * ring says nothing itself: the loop words it (csrc/device/dp_loop_narr.c), as the
 * Python reference's loop does (virtqueue.RingEvents, narrate.RingNarrator).
 */
struct dp_vq_events {
    void (*popped)(void *ctx, uint16_t avail_idx, uint16_t last_avail_idx, uint16_t head);
    void (*descriptor)(void *ctx, const char *where, uint16_t at, uint64_t addr, uint32_t len,
                       uint16_t flags, uint16_t next);
    void (*indirect_table)(void *ctx, uint64_t addr, uint32_t count);
    void (*notify_event_idx)(void *ctx, uint16_t used_idx, uint16_t used_event, uint16_t old,
                             int valid, int need);
    void (*notify_flags)(void *ctx, uint16_t used_idx, uint16_t flags, int need);
};

struct dp_vq {
    uint32_t num;
    uint32_t max_indirect;
    uint8_t event_idx;
    uint8_t indirect;
    uint8_t signalled_used_valid;
    uint16_t last_avail_idx;
    uint16_t shadow_avail_idx;
    uint16_t used_idx;
    uint16_t signalled_used;
    uintptr_t desc;  /* host addresses of the three ring parts */
    uintptr_t avail;
    uintptr_t used;
    char err[DP_ERRMSG_SIZE]; /* what the last error was, for the log */
    /* Set by a loop that tells a step (--trace-requests): pop and should_notify report to it. */
    const struct dp_vq_events *events;
    void *events_ctx;
};

/* A popped chain: device-readable pieces, then device-writable ones. */
struct dp_chain {
    uint16_t head;
    uint64_t out_len;
    uint64_t in_len;
    uint32_t nout;
    uint32_t nin;
    uint32_t ndesc;   /* descriptors, for the seg_max check */
    uint32_t longest; /* the longest descriptor, for the size_max check */
    uint32_t cap;
    struct dp_iovec *iov; /* host address, length; grows on demand */
};

/* SplitQueue.__init__ once the ring addresses are translated: resumes from used->idx. */
void dp_vq_init(struct dp_vq *vq, uint32_t num, uintptr_t desc, uintptr_t avail, uintptr_t used,
                uint16_t last_avail_idx, int event_idx, int indirect, uint32_t max_indirect);
/* 1: a chain was popped into c; 0: the ring is empty; else -enum dp_gerr (vq->err says more). */
int dp_vq_pop(struct dp_vq *vq, const struct dp_mem *mem, struct dp_chain *c);
/*
 * The chain at head, as pop would read it, without touching the avail ring: a
 * request the inflight area says was in flight when the last backend died.
 * 1, or -enum dp_gerr.
 */
int dp_vq_map_desc(struct dp_vq *vq, const struct dp_mem *mem, struct dp_chain *c, uint16_t head);
void dp_vq_add_used(struct dp_vq *vq, uint16_t head, uint32_t len);
void dp_vq_flush_used(struct dp_vq *vq);
int dp_vq_should_notify(struct dp_vq *vq);
/*
 * Kicks: the thread turns them off while it works on the ring and back on
 * only before it sleeps (as Linux's vhost does), so a driver that keeps the
 * ring busy, or a device that polls, costs no kick per request.
 * enable: 1 if work arrived meanwhile (look again); 0: none; -DP_GERR_AVAIL_IDX_JUMP.
 */
void dp_vq_disable_notification(struct dp_vq *vq);
int dp_vq_enable_notification(struct dp_vq *vq);
/* avail->idx != last_avail_idx, without checks or side effects: for adaptive polling. */
int dp_vq_peek(const struct dp_vq *vq);

void dp_chain_free(struct dp_chain *c);

#endif

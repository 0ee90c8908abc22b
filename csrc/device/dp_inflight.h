/*
 * Inflight I/O tracking for split virtqueues (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD),
 * to the letter of QEMU's docs/interop/vhost-user.rst, "Inflight I/O tracking".
 *
 * We complete requests out of order.  When the backend dies, QEMU rewinds the
 * ring to used->idx: a request that completed after an earlier, unfinished one
 * would run twice, and one still in flight behind a finished one would never
 * run.  So each queue keeps, in an area shared with QEMU (a memfd that QEMU
 * keeps across our death and hands back with SET_INFLIGHT_FD), which heads are
 * in flight and in what order they were popped.  The area outlives us; it is
 * only ever read again by the next backend, never concurrently by QEMU.
 *
 * Per queue, the area is a QueueRegionSplit (struct dp_inflight_split): a
 * 16-byte header and one 16-byte DescStateSplit per descriptor.  The
 * transitions, in the spec's order:
 *
 *   pop       (dp_inflight_get)      desc[head].counter = counter++; desc[head].inflight = 1
 *   complete  (dp_inflight_pre_put)  per used element, before used->idx is published:
 *                                    desc[head].next = last_batch_head; last_batch_head = head
 *             (dp_vq_flush_used)     used->idx += batch, with release ordering
 *             (dp_inflight_post_put) desc[h].inflight = 0 for every head of the batch;
 *                                    then used_idx = used->idx
 *
 * Recovery (dp_inflight_recover), when a ring starts again on an area whose
 * version is 1:
 *   - if used_idx != used->idx, we died after publishing a batch and before
 *     recording it: the batch is used->idx - used_idx heads long, listed from
 *     last_batch_head through next; their inflight flags are cleared (they
 *     completed in the guest's eyes) and used_idx = used->idx;
 *   - every head still marked in flight is resubmitted, oldest counter first,
 *     before anything new is popped, and popping resumes at used->idx + that
 *     many: each head the guest made available was either published as used,
 *     or is marked in flight, or was never popped.
 * A death between writing used elements and publishing used->idx needs no
 * repair: the guest never saw those elements, their heads are still marked,
 * and they are resubmitted and overwritten.
 *
 * Memory ordering.  The reader of what we store is the backend that runs
 * after our death, so what matters is that every prefix of our program order
 * is a consistent record: a thread killed at any instruction has made exactly
 * its earlier stores, all of which reach memory (the kill goes through the
 * kernel).  The compiler must therefore not move the stores below across one
 * another, which release stores (plain stores on x86) guarantee; each is named
 * after the race it closes in dp_inflight.c.
 *
 * Every value in the area is hostile (QEMU, a frontend we do not trust, owns
 * the memfd): recovery reads each one once, bounds every index by the ring
 * size, and refuses an area that cannot be a record of ours rather than
 * guessing (DP_INFLIGHT_E*, which break the queue).  Outside recovery the
 * area is only written, and walked through next values that are bounds-checked.
 */
#ifndef DP_INFLIGHT_H
#define DP_INFLIGHT_H

#include <stdint.h>

#define DP_INFLIGHT_VERSION 1
/* What libvhost-user and DPDK align each queue's area to. */
#define DP_INFLIGHT_ALIGNMENT 64u

/* DescStateSplit */
struct dp_inflight_desc {
    uint8_t inflight; /* 1 while the head is popped and not yet published as used */
    uint8_t padding[5];
    uint16_t next;    /* the previous head of the last batch of used descriptors */
    uint64_t counter; /* pop order */
};

/* QueueRegionSplit */
struct dp_inflight_split {
    uint64_t features; /* 0 */
    uint16_t version;  /* 0: never initialised; DP_INFLIGHT_VERSION */
    uint16_t desc_num; /* entries in desc[]: the queue size of GET_INFLIGHT_FD */
    uint16_t last_batch_head;
    uint16_t used_idx; /* used->idx as of the last batch fully recorded */
    struct dp_inflight_desc desc[];
};

_Static_assert(sizeof(struct dp_inflight_desc) == 16, "DescStateSplit is 16 bytes");
_Static_assert(sizeof(struct dp_inflight_split) == 16, "QueueRegionSplit's header is 16 bytes");

/* One queue's tracking state; region 0: not tracked (INFLIGHT_SHMFD not in use). */
struct dp_inflight {
    uintptr_t region;  /* host address of this queue's struct dp_inflight_split */
    uint32_t desc_num; /* entries the area holds */
    uint32_t batch;    /* used elements linked by pre_put since the last post_put */
    uint64_t counter;  /* the counter the next pop gets */
};

/* Bytes of one queue's area: the header and desc_num entries, rounded up to 64. */
static inline uint64_t dp_inflight_queue_size(uint32_t desc_num)
{
    uint64_t n = sizeof(struct dp_inflight_split) + (uint64_t)desc_num * 16u;
    return (n + DP_INFLIGHT_ALIGNMENT - 1) / DP_INFLIGHT_ALIGNMENT * DP_INFLIGHT_ALIGNMENT;
}

/* Bytes of the whole area: num_queues queue areas back to back (GET_INFLIGHT_FD's mmap_size). */
static inline uint64_t dp_inflight_region_size(uint32_t num_queues, uint32_t queue_size)
{
    return (uint64_t)num_queues * dp_inflight_queue_size(queue_size);
}

/*
 * GET_INFLIGHT_FD: a new area of size bytes in a memfd, all zero (every queue
 * version 0: no record yet), sealed so that its size can never change under
 * a mapping (no SIGBUS for us, none for the frontend).  The fd, or -errno.
 */
int dp_inflight_memfd(uint64_t size);

/*
 * SET_INFLIGHT_FD: check the header of one queue's area in an area the
 * frontend handed back (queue_size: the inflight description's).  0, or
 * -enum dp_inflight_err: the area cannot be one that GET_INFLIGHT_FD sized.
 */
int dp_inflight_check(uintptr_t region, uint32_t queue_size);

/* Track a queue in the area at region (dp_inflight_queue_size(desc_num) mapped bytes). */
void dp_inflight_attach(struct dp_inflight *f, uintptr_t region, uint32_t desc_num);

/* At pop, for each head (before its request is started). */
void dp_inflight_get(struct dp_inflight *f, uint16_t head);
/* At completion, for each used element added, before used->idx is published. */
void dp_inflight_pre_put(struct dp_inflight *f, uint16_t head);
/* After used->idx = used_idx was published (dp_vq_flush_used) for the heads since pre_put. */
void dp_inflight_post_put(struct dp_inflight *f, uint16_t used_idx);

struct dp_inflight_recovery {
    uint32_t fresh;          /* 1: the area was new (version 0) and is now initialised */
    uint32_t batch_cleared;  /* heads of a published but unrecorded batch, now cleared */
    uint32_t nheads;         /* heads to resubmit: heads[0..nheads), oldest first */
    uint16_t last_avail_idx; /* where popping resumes: used_idx + nheads (fresh: unset) */
    uint16_t used_idx;       /* used->idx the recovery was made against */
};

enum dp_inflight_err {
    DP_INFLIGHT_OK = 0,
    DP_INFLIGHT_EVERSION = 1, /* a version we do not know */
    DP_INFLIGHT_EBATCH = 2,   /* used->idx is further past used_idx than a queue holds */
    DP_INFLIGHT_ELINK = 3,    /* the last batch's list leaves the ring */
    DP_INFLIGHT_EFLAG = 4,    /* an inflight flag that is neither 0 nor 1 */
    DP_INFLIGHT_EHEAD = 5,    /* a head marked in flight that the ring (size num) cannot have */
    DP_INFLIGHT_ENOMEM = 6,
    DP_INFLIGHT_ESIZE = 7,    /* the ring is larger than the area's queue size */
    DP_INFLIGHT_EDESCNUM = 8, /* a recorded desc_num that is not the queue size */
    DP_INFLIGHT_EFEATURES = 9, /* feature flags we do not know (the spec knows none) */
};

/*
 * Recover the queue (size num <= desc_num) whose used->idx reads used_idx, into
 * out and heads (room for num entries).  0, or -enum dp_inflight_err: the area
 * is not a record we could have written, and the queue must not start.
 */
int dp_inflight_recover(struct dp_inflight *f, uint16_t used_idx, uint32_t num, uint16_t *heads,
                        struct dp_inflight_recovery *out);

/* The ordered stores, for the tests' model (tests/inflight_support.py) to make the same. */
void dp_inflight_store8_release(uintptr_t addr, uint8_t value);
void dp_inflight_store16_release(uintptr_t addr, uint16_t value);

#endif

/*
 * virtio-blk requests (virtio 1.2, section 5.2) in C: parse a popped chain
 * into a request, and complete it.  This is parse_request and
 * complete_request of dataplane/device/blk.py, with the same statuses, used
 * lengths and bounce-buffer rule.
 */
#ifndef DP_BLK_H
#define DP_BLK_H

#include <stddef.h>
#include <stdint.h>

#include "dp_bounce.h"
#include "dp_io.h"
#include "dp_virtio.h"
#include "dp_vq.h"

#define DP_VIRTIO_BLK_ID_BYTES VIRTIO_BLK_ID_BYTES

/* What request handling needs to know about the device (dataplane/device/disk.py's Disk). */
struct dp_disk {
    uint64_t sectors;
    uint32_t align;     /* O_DIRECT buffer alignment; 1 for the page cache */
    uint32_t seg_max;   /* what the config space promises: data segments per request... */
    uint32_t size_max;  /* ... and bytes per segment; more gets IOERR */
    uint8_t read_only;
    uint8_t writeback;  /* flipped by the control plane at any time: atomic access only */
    uint8_t serial[DP_VIRTIO_BLK_ID_BYTES];
};

/* One request between pop and completion (blk.BlkRequest). */
struct dp_req {
    struct dp_req *next_free;
    uint32_t queue;
    uint16_t head;
    uint8_t status;
    uint8_t has_io;      /* io goes to the engine; else the status is known already */
    uint32_t used_len;
    uint32_t cap;        /* iovecs that fit behind io */
    uint32_t nbounce_out; /* a bounced read goes back to io.iov[1..nbounce_out] */
    uint32_t nlog;       /* dirty logging: the pieces the device writes (data, not status) */
    struct dp_iovec *logv; /* ... at the end of the iovecs behind io */
    uintptr_t status_at;
    uint64_t bounce_len; /* bytes to bounce (misaligned for O_DIRECT); 0: none */
    void *bounce;        /* its block, once dp_blk_bounce found one */
    size_t bounce_size;
    uint32_t type;       /* the header's VIRTIO_BLK_T_* (for stats and the trace) */
    uint32_t trace_seq;  /* its number in the --trace-requests narrative; 0: not traced */
    uint64_t sector;     /* the header's sector */
    uint64_t t_wake;     /* CLOCK_MONOTONIC ns, when stats or recording are on: the pass woke, */
    uint64_t t_pop;      /* ... its ring's popping began, */
    uint64_t t_submit;   /* ... its batch went to the engine */
    struct dp_io io;     /* last: its iov[] trails the struct */
};

/*
 * A thread's request memory: a free list of requests with room for
 * DP_REQ_INLINE_IOV iovecs (bigger ones are malloc'd), and its bounce
 * memory (NULL when the disk needs no alignment).
 */
#define DP_REQ_INLINE_IOV 8
struct dp_req_cache {
    struct dp_req *free;
    struct dp_bounce *bounce;
    uint8_t log; /* dirty logging: record what each request will write (dp_req.logv) */
};

/*
 * Check the chain's framing and build its request.  With rc->log, the request also
 * records the device-writable pieces its data will go to (logv: a read's data, GET_ID's
 * serial), for the dirty log once it completes: the iovecs behind io change as an engine
 * continues a short transfer, and the chain is gone by then.  Returns 0 with *out
 * set, -DP_GERR_BAD_HEADER / -DP_GERR_BAD_STATUS (the queue breaks; msg
 * says why), or -DP_GERR_NO_MEMORY.  A request with has_io == 0 is complete
 * apart from dp_blk_complete (GET_ID has already written its data).
 */
int dp_blk_parse(const struct dp_disk *disk, const struct dp_chain *c, struct dp_req_cache *rc,
                 struct dp_req **out, char *msg, size_t msglen);

/*
 * Give req (bounce_len != 0) its bounce block: the guest pieces of a read
 * move behind it for the copy back, a write's data is gathered into it.
 * 0, or -EAGAIN when the thread's bounce memory cannot hold it now.
 */
int dp_blk_bounce(struct dp_req_cache *rc, struct dp_req *req);

/*
 * Finish req: copy a bounced read back to the guest, then write the status
 * byte.  result is the engine's result; has_result is 0 for a request that
 * never reached an engine.
 */
void dp_blk_complete(struct dp_req *req, int64_t result, int has_result);

/* Release req without touching guest memory (its queue is broken). */
void dp_blk_release(struct dp_req_cache *rc, struct dp_req *req);

void dp_req_cache_clear(struct dp_req_cache *rc);

#endif

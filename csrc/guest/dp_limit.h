/*
 * The ideal device, for `dataplane bench --target limit`: the ring's own
 * limit on this machine.
 *
 * dp_limit_run() busy-polls one split virtqueue's avail ring and completes
 * every head at once: it adds a used element and publishes used->idx, and
 * signals the call eventfd when the driver asked for it.  It touches no
 * descriptor, header, buffer or status byte, and never asks for a kick.  The
 * bench's driver runs against it exactly as against a real backend (with the
 * status byte pre-set to OK, since nobody writes it), so a backend's IOPS as
 * a fraction of this target's says how close it comes to the cost of the
 * ring alone.
 */
#ifndef DP_LIMIT_H
#define DP_LIMIT_H

#include <stdint.h>

struct dp_limit_queue {
    /* The ring, at its host addresses. */
    uintptr_t avail;
    uintptr_t used;
    uint32_t num;
    uint32_t event_idx;
    int call_fd;  /* non-blocking eventfd */
    int stop;     /* set by another thread: return at the next look at the ring */
    /* Where the ring starts, set before the thread does: the driver may publish first. */
    uint16_t last_avail_idx;
    uint16_t used_idx;
    uint32_t pad;
    /* Results. */
    uint64_t completed;
    uint64_t notifies;
    uint64_t cpu_ns; /* this thread's CPU time inside dp_limit_run */
};

/* Serve the ring until stop is set.  0, or -errno if the call eventfd failed. */
int dp_limit_run(struct dp_limit_queue *q);

#endif

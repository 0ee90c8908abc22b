/*
 * The bench's workload loop on one split virtqueue (the ring itself is
 * dp_drv_ring.h).
 *
 * dp_drv_run() plays a virtio-blk driver on one queue until its workload
 * ends: it fills preallocated request slots, publishes them in the avail
 * ring, kicks (honouring EVENT_IDX or VRING_USED_F_NO_NOTIFY), harvests the
 * used ring and refills.  When nothing has completed it either sleeps on the
 * call eventfd (notify_poll 0: an interrupt-driven driver, as Linux's
 * virtio-blk) or, having asked for no calls, busy-polls the used ring
 * (notify_poll 1: a polling driver).  One call per queue, on its own thread;
 * cffi releases the GIL around it.  Python sets everything up (the frontend,
 * guest RAM, the ring layout) and reads the stats after.
 *
 * Every request slot owns a fixed area in guest RAM: a 128-byte meta block
 * (header, status byte, discard segment, indirect table) and a data buffer
 * buf_offset bytes into a 4096-byte aligned stride: offset 0 lets O_DIRECT
 * backends use it in place, an odd offset makes them bounce.
 */
#ifndef DP_DRIVER_H
#define DP_DRIVER_H

#include <stdint.h>

#include "dp_hist.h"
#include "dp_stamp.h"

#define DP_DRV_META_SIZE 128
#define DP_DRV_INFLIGHT 0x80000000u /* gen_map flag: the block has a request in flight */

/* In the order of dataplane/spec/kinds.py TRACE_KINDS (tests/spec/test_spec.py). */
enum dp_drv_kind {
    DP_DRV_READ = 0,
    DP_DRV_WRITE = 1,
    DP_DRV_FLUSH = 2,
    DP_DRV_DISCARD = 3,
    DP_DRV_WRITE_ZEROES = 4,
    DP_DRV_NKINDS = 5,
};

enum dp_drv_pattern {
    DP_DRV_SEQ = 0,
    DP_DRV_RAND = 1,
};

/* Return codes of dp_drv_run besides 0 and -errno from the kernel. */
#define DP_DRV_E_STALL (-1000)  /* requests in flight and no completion for stall_ns */
#define DP_DRV_E_BAD_USED (-1001) /* the backend put an id we have not published in the used ring */
#define DP_DRV_E_CONFIG (-1002) /* the queue configuration is inconsistent */
#define DP_DRV_E_ABORTED (-1003) /* stop was 2: return at once, requests may be in flight */

/* One request of a trace, relative to the trace start. */
struct dp_drv_op {
    uint64_t t_ns;
    uint64_t sector;
    uint32_t len; /* bytes; for DISCARD/WRITE_ZEROES a multiple of 512 */
    uint32_t kind; /* enum dp_drv_kind */
};

struct dp_drv_stats {
    uint64_t ios;
    uint64_t ios_by_kind[DP_DRV_NKINDS];
    uint64_t bytes_by_kind[DP_DRV_NKINDS];
    uint64_t io_errors; /* status byte other than VIRTIO_BLK_S_OK */
    uint64_t error_sector;
    uint32_t error_status;
    uint32_t error_kind;
    uint64_t verify_errors;
    uint64_t verify_sector;
    uint64_t verify_expected_gen;
    uint64_t verify_found_gen;
    uint64_t verify_found_sector;
    uint32_t verify_reason; /* enum dp_drv_verify_reason */
    uint32_t bad_used_id;
    uint64_t kicks;
    uint64_t wakeups;
    uint64_t start_ns; /* CLOCK_MONOTONIC */
    uint64_t end_ns;
    uint64_t cpu_ns; /* this thread's CPU time inside dp_drv_run */
    uint64_t hist[DP_HIST_BUCKETS]; /* submit -> completion, in ns */
    /*
     * The round trip's layers on this side (dataplane/spec/latency.py), summed
     * over the completed requests: lat_sum is the round trip (publish ->
     * reap), publish_sum the part before the kick.  kick_at and reap_at sum
     * absolute CLOCK_MONOTONIC times, wrapping mod 2^64: less the device's
     * sums of its pop and notify times over the same requests (dp_stats.h),
     * they are the exact totals of kick -> pop and notify -> reap.
     */
    uint64_t lat_sum;
    uint64_t publish_sum;
    uint64_t kick_at;
    uint64_t reap_at;
};

struct dp_drv_queue {
    /* Guest RAM: where it is mapped here, and its guest-physical base. */
    uintptr_t ram_host;
    uint64_t ram_gpa;
    uint64_t ram_size;
    /* The ring, by guest-physical address. */
    uint64_t desc_gpa;
    uint64_t avail_gpa;
    uint64_t used_gpa;
    uint32_t num;
    uint32_t event_idx;
    uint32_t indirect;
    int kick_fd;
    int call_fd; /* non-blocking eventfd */
    /* Request slots. */
    uint32_t iodepth;
    uint32_t buf_stride; /* bytes per slot data buffer, a multiple of 4096 */
    uint32_t buf_offset; /* where in its stride a slot's data starts (--buf-align) */
    uint32_t status_init; /* the status byte before the device writes it: 0xff (none) */
    uint64_t meta_gpa;   /* iodepth * DP_DRV_META_SIZE bytes */
    uint64_t data_gpa;   /* iodepth * buf_stride bytes */
    /* Synthetic workload (when ops == NULL). */
    uint32_t pattern;    /* enum dp_drv_pattern */
    uint32_t rwmixread;  /* percent of reads, 0..100 */
    uint32_t bs;         /* bytes, a multiple of 512 */
    uint32_t verify_nonce;
    uint64_t start_sector; /* block k is at start_sector + k * bs / 512 */
    uint64_t nblocks;
    uint64_t seed;
    uint32_t *gen_map;   /* nblocks entries for --verify, else NULL */
    /* Or a trace. */
    const struct dp_drv_op *ops;
    uint64_t nops;
    uint32_t timed;      /* issue each op no earlier than its t_ns */
    uint32_t notify_poll; /* 1: suppress calls and busy-poll the used ring; 0: sleep on calls */
    /* Limits (0 = none). */
    uint64_t max_ios;
    uint64_t runtime_ns;
    uint64_t stall_ns;
    int stop;            /* set by another thread: 1 stop issuing, drain, return; 2 abort */
    int pad1;
    struct dp_drv_stats stats;
};

/* Run the queue's workload to its end.  0, -errno, or a DP_DRV_E_* code. */
int dp_drv_run(struct dp_drv_queue *q);

/* The VIRTIO_BLK_T_* a kind is sent as (UINT32_MAX for no kind): tests/spec/test_spec.py. */
uint32_t dp_drv_blk_type(uint32_t kind);

/* Zero guest RAM, which faults it in once before a measured run. */
void dp_drv_prefault(uintptr_t addr, uint64_t len);

#endif

/*
 * Per-queue and per-thread counters of the data path, cheap enough to stay on.
 *
 * The dataplane thread is the only writer: plain u64 increments, no atomics,
 * no syscalls (the clock is the vDSO's CLOCK_MONOTONIC).  Readers on other
 * threads (the control plane's stats snapshot) load the u64s while the
 * thread runs: each u64 load is whole on the 64-bit targets we build for,
 * but the set is not a consistent cut; a snapshot may count a request in
 * one field and not yet in another (off by at most one pass).
 *
 * Histograms have DP_STAT_BUCKETS log2 buckets: bucket i counts values v
 * with bit_length(v) == i, that is 2^(i-1) <= v < 2^i (bucket 0: v == 0);
 * the last bucket also takes everything larger.  Latencies are in ns.
 *
 * Build with -DDP_STATS=0 (DP_EXTRA_CFLAGS) to compile the counters out, to
 * measure what they cost.
 */
#ifndef DP_STATS_H
#define DP_STATS_H

#include <stdint.h>

#include "dp_loglin.h"
#include "dp_virtio.h"

#ifndef DP_STATS
#define DP_STATS 1
#endif
#define DP_STATS_ENABLED DP_STATS

#define DP_STAT_BUCKETS 48

/* Request kinds counted, in the order of dataplane/spec/kinds.py TABLE (tests/spec/test_spec.py). */
enum dp_stat_kind {
    DP_KIND_READ = 0,
    DP_KIND_WRITE,
    DP_KIND_FLUSH,
    DP_KIND_DISCARD,
    DP_KIND_WRITE_ZEROES,
    DP_KIND_GET_ID,
    DP_KIND_OTHER,
    DP_STAT_KINDS,
};

/*
 * Latency layers of one request, in the order of dataplane/device/stats.py
 * LAT_LAYERS.  They tile its time in the device: the boundaries are the
 * wake of the pass that popped it (a kick, a completion, a poll hit), its
 * pop, the submit of its batch, the reap of its completion, the publication
 * of used->idx, and the notify decision (just before the call eventfd is
 * written, or the notification suppressed); each layer runs from one
 * boundary to the next, so a request's layers add up to notify - wake.
 */
enum dp_lat_layer {
    DP_LAT_KICK_POP = 0,     /* the pass woke -> its ring's popping began */
    DP_LAT_POP_SUBMIT,       /* popped -> handed to the engine with its batch */
    DP_LAT_SUBMIT_COMPLETE,  /* handed to the engine -> reaped (host I/O) */
    DP_LAT_COMPLETE_USED,    /* reaped -> used->idx published (the rest of the pass) */
    DP_LAT_USED_NOTIFY,      /* used->idx published -> notify decided (the eventfd write is next) */
    DP_LAT_LAYERS,
};

/* Layer histograms: log-linear, 4 buckets per power of two (dp_loglin.h), up to 2^40 ns. */
#define DP_LAYER_SUB_BITS 2
#define DP_LAYER_BUCKETS ((40 - DP_LAYER_SUB_BITS + 1) << DP_LAYER_SUB_BITS)

struct dp_layer {
    uint64_t sum_ns;                 /* the count is the sum of hist */
    uint64_t hist[DP_LAYER_BUCKETS]; /* the last bucket also takes everything larger */
};

/*
 * Every request completed into a queue counts once in each layer, when its
 * used element is published.  pop_at and notify_at sum the absolute
 * CLOCK_MONOTONIC times of its pop and its notify, wrapping mod 2^64: the
 * bench driver keeps the same sums of its kick and reap times in the same
 * clock, so that the difference of two such sums over the same requests is
 * the exact total of the layer between them (kick -> pop, notify -> reap).
 */
struct dp_qlayers {
    struct dp_layer layer[DP_LAT_LAYERS];
    uint64_t pop_at;
    uint64_t notify_at;
};

struct dp_qstats {
    uint64_t requests[DP_STAT_KINDS]; /* popped and parsed, by kind */
    uint64_t completed;               /* used elements added */
    uint64_t bytes_read;              /* data bytes of reads completed OK */
    uint64_t bytes_written;           /* data bytes of writes completed OK */
    uint64_t ioerr;                   /* completed with VIRTIO_BLK_S_IOERR */
    uint64_t unsupp;                  /* completed with VIRTIO_BLK_S_UNSUPP */
    uint64_t notifies;                /* call eventfd writes */
    uint64_t notifies_dropped;        /* notifications dropped: the call eventfd was full */
    struct dp_qlayers layers;         /* per-layer latency of completed requests */
};

struct dp_tstats {
    uint64_t batch[DP_STAT_BUCKETS];  /* requests popped per pass (passes with any) */
    uint64_t batch_sum;               /* requests popped, for the histogram's sum */
};

static inline unsigned dp_stat_bucket(uint64_t v)
{
    unsigned b = v ? 64u - (unsigned)__builtin_clzll(v) : 0u;

    return b < DP_STAT_BUCKETS ? b : DP_STAT_BUCKETS - 1;
}

static inline void dp_layer_add(struct dp_layer *l, uint64_t ns, uint64_t n)
{
    unsigned b = dp_loglin_index(ns, DP_LAYER_SUB_BITS);

    l->sum_ns += ns * n;
    l->hist[b < DP_LAYER_BUCKETS ? b : DP_LAYER_BUCKETS - 1] += n;
}

static inline enum dp_stat_kind dp_stat_kind_of(uint32_t virtio_type)
{
    switch (virtio_type) {
    case VIRTIO_BLK_T_IN: return DP_KIND_READ;
    case VIRTIO_BLK_T_OUT: return DP_KIND_WRITE;
    case VIRTIO_BLK_T_FLUSH: return DP_KIND_FLUSH;
    case VIRTIO_BLK_T_GET_ID: return DP_KIND_GET_ID;
    case VIRTIO_BLK_T_DISCARD: return DP_KIND_DISCARD;
    case VIRTIO_BLK_T_WRITE_ZEROES: return DP_KIND_WRITE_ZEROES;
    default: return DP_KIND_OTHER;
    }
}

#endif

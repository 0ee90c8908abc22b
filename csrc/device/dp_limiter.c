#include "dp_limiter.h"

#define NS_PER_S 1000000000ull

uint64_t dp_limiter_cost_ns(uint64_t units, uint64_t rate)
{
    unsigned __int128 ns = (unsigned __int128)units * NS_PER_S / rate;

    return ns > UINT64_MAX ? UINT64_MAX : (uint64_t)ns;
}

static inline uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

void dp_limiter_set(struct dp_limiter *l, uint32_t kind, uint64_t rate, uint64_t burst_ns)
{
    struct dp_bucket *b;

    if (kind >= DP_LIMITS)
        return;
    b = &l->bucket[kind];
    /*
     * Relaxed: a thread that reads the new rate with the old burst (or the
     * other way round) books one request with a mixed pair, which is as good
     * as booking it just before or just after the change.
     */
    __atomic_store_n(&b->rate, rate, __ATOMIC_RELAXED);
    __atomic_store_n(&b->burst_ns, burst_ns, __ATOMIC_RELAXED);
    __atomic_store_n(&b->tat, 0, __ATOMIC_RELAXED);
    /*
     * Relaxed too: a thread holding a request re-reads this when it wakes (the
     * control plane wakes it after a change); it lets the request go as soon as it
     * sees the bump, whatever it read of the buckets.
     */
    __atomic_fetch_add(&l->generation, 1, __ATOMIC_RELAXED);
}

/* Book units in one bucket; the wait it asks for. */
static uint64_t take(struct dp_bucket *b, uint64_t units, uint64_t now)
{
    uint64_t rate = __atomic_load_n(&b->rate, __ATOMIC_RELAXED);
    uint64_t burst = __atomic_load_n(&b->burst_ns, __ATOMIC_RELAXED);
    uint64_t cost, old, wait, base;

    if (!rate)
        return 0;
    cost = dp_limiter_cost_ns(units, rate);
    old = __atomic_load_n(&b->tat, __ATOMIC_RELAXED);
    do {
        uint64_t line = sat_add(now, burst);

        wait = old > line ? old - line : 0;
        base = old > now ? old : now;
        /*
         * Relaxed compare-and-swap: tat orders nothing but itself.  Two threads
         * booking at once both succeed, one after the other, each on the tat the
         * other left: no booking is lost, and none waits for a lock holder.
         */
    } while (!__atomic_compare_exchange_n(&b->tat, &old, sat_add(base, cost), 1, __ATOMIC_RELAXED,
                                          __ATOMIC_RELAXED));
    return wait;
}

uint64_t dp_limiter_admit(struct dp_limiter *l, int is_write, uint64_t nbytes, uint64_t now_ns)
{
    /*
     * Each bucket books the request at now, though it may start later (at the
     * longest wait).  A bucket whose own wait was shorter has then charged the
     * units earlier than they are spent: over any window it has let through no
     * more than it booked, so no limit is exceeded, and the bookings behind
     * are only conservative by the difference.
     */
    uint64_t wait = take(&l->bucket[DP_LIMIT_IOPS], 1, now_ns);
    uint64_t w = take(&l->bucket[is_write ? DP_LIMIT_WRITE_IOPS : DP_LIMIT_READ_IOPS], 1, now_ns);

    wait = w > wait ? w : wait;
    w = take(&l->bucket[DP_LIMIT_BPS], nbytes, now_ns);
    wait = w > wait ? w : wait;
    w = take(&l->bucket[is_write ? DP_LIMIT_WRITE_BPS : DP_LIMIT_READ_BPS], nbytes, now_ns);
    wait = w > wait ? w : wait;
    if (wait) {
        __atomic_fetch_add(&l->throttled, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(&l->throttled_ns, wait, __ATOMIC_RELAXED);
    }
    return wait;
}

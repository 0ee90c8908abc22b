/*
 * Memory ordering between the device (us) and the driver (the guest) on a
 * split virtqueue.  Each helper names the race it closes; the Python
 * reference path calls these same functions through cffi.
 */
#ifndef DP_BARRIER_H
#define DP_BARRIER_H

#include <stdint.h>

/*
 * Read avail->idx with acquire ordering.  The driver fills ring entries and
 * descriptors, then bumps avail->idx with release ordering.  Without acquire
 * here, the CPU (or compiler) could read avail->ring[] or a descriptor before
 * idx and see a stale head: the "read descriptor before it was published" race.
 */
static inline uint16_t dp_avail_idx_acquire(uintptr_t addr)
{
    return __atomic_load_n((const uint16_t *)addr, __ATOMIC_ACQUIRE);
}

/*
 * Publish used->idx with release ordering.  The used elements, status bytes
 * and data written into guest buffers must be visible before the driver can
 * observe the new index; otherwise it may complete a request whose status
 * byte or data it has not yet seen: the "stale completion" race.
 */
static inline void dp_used_idx_release(uintptr_t addr, uint16_t val)
{
    __atomic_store_n((uint16_t *)addr, val, __ATOMIC_RELEASE);
}

/*
 * Full fence between publishing used->idx (or avail_event) and reading
 * used_event / avail->flags (or avail->idx again).  Store->load ordering is
 * the one thing release/acquire do not give.  Without it the driver may read
 * our old used->idx while we read its old used_event, both decide the other
 * will act, and the interrupt (or kick) is lost: the "missed notification"
 * race.
 */
static inline void dp_smp_mb(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

#endif

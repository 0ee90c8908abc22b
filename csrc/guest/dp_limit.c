#define _GNU_SOURCE
#include "dp_limit.h"

#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>

#include "dp_barrier.h"
#include "dp_cpu.h"
#include "dp_virtio.h"

int dp_limit_run(struct dp_limit_queue *q)
{
    volatile uint16_t *used_flags = (volatile uint16_t *)q->used;
    uint16_t last_avail = q->last_avail_idx;
    uint16_t used_idx = q->used_idx;
    uint16_t signalled = used_idx;
    uint64_t cpu0 = dp_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    int ret = 0;

    /* Never kick: we poll.  (With EVENT_IDX, avail_event stays where it is.) */
    if (!q->event_idx)
        *used_flags = VRING_USED_F_NO_NOTIFY;
    while (!__atomic_load_n(&q->stop, __ATOMIC_RELAXED)) {
        uint16_t avail_idx = dp_avail_idx_acquire(q->avail + VRING_AVAIL_IDX);
        int need;

        if (avail_idx == last_avail) {
            dp_cpu_relax();
            continue;
        }
        while (last_avail != avail_idx) {
            uint16_t head;
            uint32_t elem[2];

            memcpy(&head, (const void *)(q->avail + VRING_AVAIL_RING(last_avail % q->num)), 2);
            elem[0] = head;
            elem[1] = 1;
            memcpy((void *)(q->used + VRING_USED_RING(used_idx % q->num)), elem, sizeof(elem));
            last_avail++;
            used_idx++;
        }
        dp_used_idx_release(q->used + VRING_USED_IDX, used_idx);
        q->completed += (uint16_t)(used_idx - signalled);
        /* used->idx published, then used_event / avail->flags read: dp_smp_mb says why. */
        dp_smp_mb();
        if (q->event_idx) {
            uint16_t event;

            memcpy(&event, (const void *)(q->avail + VRING_USED_EVENT(q->num)), 2);
            need = vring_need_event(event, used_idx, signalled);
        } else {
            need = !(*(volatile uint16_t *)q->avail & VRING_AVAIL_F_NO_INTERRUPT);
        }
        signalled = used_idx;
        if (need) {
            if (eventfd_write(q->call_fd, 1) < 0 && errno != EAGAIN) {
                ret = -errno;
                break;
            }
            q->notifies++;
        }
    }
    q->cpu_ns = dp_clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    return ret;
}

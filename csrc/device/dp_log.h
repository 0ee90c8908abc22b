/*
 * The dirty log of live migration (vhost-user's VHOST_USER_PROTOCOL_F_LOG_SHMFD and
 * VHOST_F_LOG_ALL), device side.
 *
 * While QEMU copies guest RAM to the destination it asks every vhost device to report the
 * pages it writes: the device sets bit p of a shared bitmap (a memfd that SET_LOG_BASE
 * hands over, mapped by dataplane/device/dirty_log.py) for each guest-physical page p
 * (gpa / 4096, QEMU's VHOST_LOG_PAGE) it wrote into, and QEMU sends those pages again.
 * Bit p is bit p % 8 of byte p / 8 (the layout of libvhost-user's vu_log_page; QEMU reads
 * the bitmap as little-endian 64-bit words, which is the same bits on x86).  QEMU takes
 * the bits with an atomic exchange of each word, then copies the pages they name.
 *
 * The loop (dp_loop.c) marks, while logging: the data and status bytes of each completed
 * request, and the used ring (by the guest-physical address SET_VRING_ADDR gave with
 * VHOST_VRING_F_LOG) after each batch's used->idx.  A page past the end of the log is the
 * frontend's error (its log is too small for the memory table it sent): nothing is
 * written, and dp_log_mark says so.
 */
#ifndef DP_LOG_H
#define DP_LOG_H

#include <stdint.h>

#define DP_LOG_PAGE 4096u

struct dp_log {
    uint8_t *base;  /* the log's first byte; NULL: not logging */
    uint64_t pages; /* pages it covers: 8 per byte */
};

/*
 * Set the bits of the pages of [gpa, gpa+len): how many were clear (pages newly logged),
 * or -1 if a page lies past the log (or the range wraps), with nothing written.
 *
 * The caller has written the bytes, then made them visible before these loads with a
 * full fence (dp_log_fence).  A bit found set is left alone: QEMU has not taken it yet,
 * so it will copy the page, with our bytes, after it takes it.
 */
static inline int64_t dp_log_mark(const struct dp_log *log, uint64_t gpa, uint64_t len)
{
    uint64_t first, last;
    int64_t newly = 0;

    if (!len)
        return 0;
    if (len - 1 > UINT64_MAX - gpa)
        return -1;
    first = gpa / DP_LOG_PAGE;
    last = (gpa + len - 1) / DP_LOG_PAGE;
    if (last >= log->pages)
        return -1;
    for (uint64_t p = first; p <= last; p++) {
        uint8_t *byte = log->base + p / 8, bit = (uint8_t)(1u << (p % 8));

        if (!(__atomic_load_n(byte, __ATOMIC_RELAXED) & bit) &&
            !(__atomic_fetch_or(byte, bit, __ATOMIC_RELAXED) & bit))
            newly++;
    }
    return newly;
}

/*
 * Between the device's writes into guest memory and the log bits that report them.  QEMU
 * takes a word of bits (an atomic exchange), then reads the pages to send them.  If our
 * bit became visible before our bytes did, QEMU could take the bit and copy the page
 * without them, and nothing would send that page again: the "lost dirty page" race.  A
 * release order would do for the fetch_or, but dp_log_mark first *loads* the bit (and
 * skips a set one): a store-load order, which only a full fence gives.
 */
static inline void dp_log_fence(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

#endif

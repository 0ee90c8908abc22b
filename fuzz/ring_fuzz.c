/*
 * libFuzzer target: the C ring walker (dp_vq.c) and virtio-blk parse and
 * completion (dp_blk.c) over a fuzzed guest RAM and ring state.
 *
 * The input is a small header (queue size, features, last_avail_idx, where
 * the three ring parts lie, disk geometry, the engine's results) followed by
 * the guest RAM's contents.  Guest RAM is two regions in two separate heap
 * blocks with a guest-physical hole between them, so that a translation
 * that runs past a region end, or into the hole, is caught by ASan (heap
 * overflow) or by the checks below, never silently lands in the neighbour.
 *
 * Each run pops every chain the ring offers (as the thread does, up to a
 * budget), parses it, "executes" the I/O by touching every iovec the way an
 * engine would (reads write the device-writable buffers, writes read the
 * device-readable ones), completes it with a fuzzed result, adds it to the
 * used ring, and asks whether to notify.  Properties checked besides memory
 * safety: every iovec handed to an engine lies inside one region (or inside
 * the request's bounce buffer); an I/O never goes past the disk's capacity;
 * after a guest error the queue is left alone, as the thread leaves a broken
 * queue.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dp_blk.h"
#include "dp_mem.h"
#include "dp_vq.h"

#define REGION_SIZE 0x8000u
#define REGION1_GPA 0x10000u /* a hole of 0x8000 between the two regions */
#define SECTOR 512u

struct fuzz_header {
    uint8_t qsize_log2;
    uint8_t flags; /* bit 0 event_idx, 1 indirect, 2 read_only, 3 writeback, 4 align 512,
                      5 seg_max num - 2 (else 1022), 6 size_max 4 KiB (else 1 MiB),
                      7 dirty logging (requests record what they write) */
    uint16_t last_avail_idx;
    uint16_t desc_off, avail_off, used_off; /* offsets into region 0 (clamped below) */
    uint8_t ring_region;                    /* bit 0: the rings lie in region 1 */
    uint8_t result_bits;                    /* which completions fail, one bit per request */
    uint32_t sectors;
} __attribute__((packed));

static uint8_t *regions_host[2];

static void check_inside(uint64_t base, uint64_t len, const struct dp_req *r)
{
    if (len == 0)
        return;
    if (r->bounce && base >= (uintptr_t)r->bounce &&
        base + len <= (uintptr_t)r->bounce + r->bounce_size)
        return;
    for (int i = 0; i < 2; i++) {
        uintptr_t h = (uintptr_t)regions_host[i];
        if (base >= h && base + len <= h + REGION_SIZE)
            return;
    }
    __builtin_trap(); /* an iovec outside guest RAM: the walker let a bad address through */
}

/* What an engine would do with the request's memory. */
static void execute(const struct dp_req *r, uint64_t sectors)
{
    const struct dp_io *io = &r->io;
    volatile uint8_t sink = 0;

    if (io->op != DP_OP_READ && io->op != DP_OP_WRITE)
        return;
    if (io->offset > sectors * SECTOR || io->length > sectors * SECTOR - io->offset)
        __builtin_trap(); /* past the capacity: the image would grow */
    for (uint32_t i = 0; i < io->iovcnt; i++) {
        uint8_t *p = (uint8_t *)(uintptr_t)io->iov[i].base;
        uint64_t n = io->iov[i].len;

        check_inside(io->iov[i].base, n, r);
        if (io->op == DP_OP_READ)
            memset(p, 0xa5, n);
        else
            for (uint64_t k = 0; k < n; k += 64)
                sink ^= p[k];
    }
    (void)sink;
}

static uint16_t clamp(uint16_t off, uint32_t size, uint32_t align)
{
    uint32_t room = REGION_SIZE - size;
    return (uint16_t)(((uint32_t)off % (room + 1)) & ~(align - 1));
}

/* The thread's bounce memory: small, so that requests past its largest block are tried. */
#define BOUNCE_BUDGET (256u << 10)
static struct dp_bounce *bounce;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_header h;
    struct dp_mem_region table[2];
    struct dp_mem mem = {2, table};
    struct dp_disk disk = {0};
    struct dp_req_cache rc = {0};
    struct dp_chain chain = {0};
    struct dp_vq vq;
    uint32_t num, desc_size, avail_size, used_size;
    uint8_t *rings;

    if (size < sizeof(h))
        return 0;
    if (!bounce) {
        int err;

        bounce = dp_bounce_new(BOUNCE_BUDGET, &err);
        if (!bounce)
            abort();
    }
    rc.bounce = bounce;
    rc.log = (h.flags >> 7) & 1;
    memcpy(&h, data, sizeof(h));
    data += sizeof(h);
    size -= sizeof(h);
    for (int i = 0; i < 2; i++) {
        size_t n = size > REGION_SIZE ? REGION_SIZE : size;

        regions_host[i] = calloc(1, REGION_SIZE);
        memcpy(regions_host[i], data, n);
        data += n;
        size -= n;
    }
    table[0] = (struct dp_mem_region){0, REGION_SIZE, (uintptr_t)regions_host[0]};
    table[1] = (struct dp_mem_region){REGION1_GPA, REGION_SIZE, (uintptr_t)regions_host[1]};

    num = 1u << (1 + h.qsize_log2 % 8); /* 2 .. 256 */
    desc_size = 16 * num;
    avail_size = 6 + 2 * num;
    used_size = 6 + 8 * num;
    rings = regions_host[h.ring_region & 1];
    /* As the control plane does: the three parts lie inside one region (uva_to_gpa). */
    dp_vq_init(&vq, num, (uintptr_t)rings + clamp(h.desc_off, desc_size, 16),
               (uintptr_t)rings + clamp(h.avail_off, avail_size, 2),
               (uintptr_t)rings + clamp(h.used_off, used_size, 4), h.last_avail_idx,
               h.flags & 1, (h.flags >> 1) & 1, 1024);
    disk.sectors = h.sectors % (1u << 20);
    disk.align = h.flags & 16 ? 512 : 1;
    disk.read_only = (h.flags >> 2) & 1;
    disk.writeback = (h.flags >> 3) & 1;
    /* What the config space would promise, from generous to tight (queue sizes 2 .. 256). */
    disk.seg_max = h.flags & 32 ? num - 2 : 1022;
    disk.size_max = h.flags & 64 ? 4096 : 1u << 20;
    memcpy(disk.serial, "fuzz-serial", 11);

    for (unsigned n = 0, budget = 2 * num; budget; budget--) {
        struct dp_req *req;
        char msg[DP_ERRMSG_SIZE];
        int ret = dp_vq_pop(&vq, &mem, &chain);

        if (ret == 0) {
            ret = dp_vq_enable_notification(&vq);
            if (ret > 0)
                continue;
            break; /* empty, or broken (no more guest memory is touched) */
        }
        if (ret < 0)
            break;
        for (uint32_t i = 0; i < chain.nout + chain.nin; i++) {
            uint64_t b = chain.iov[i].base, l = chain.iov[i].len;
            struct dp_req none = {0};
            check_inside(b, l, &none);
        }
        if (dp_blk_parse(&disk, &chain, &rc, &req, msg, sizeof(msg)) < 0)
            break;
        for (uint32_t i = 0; i < req->nlog; i++) /* what the dirty log would mark */
            check_inside(req->logv[i].base, req->logv[i].len, req);
        /* One request at a time: the arena is empty, so a request parse let through fits. */
        if (req->bounce_len && dp_blk_bounce(&rc, req) < 0)
            abort();
        if (req->has_io) {
            execute(req, disk.sectors);
            dp_blk_complete(req, (h.result_bits >> (n++ % 8)) & 1 ? -5 : (int64_t)req->io.length,
                            1);
        } else {
            dp_blk_complete(req, 0, 0);
        }
        dp_vq_add_used(&vq, req->head, req->used_len);
        dp_blk_release(&rc, req);
        dp_vq_flush_used(&vq);
        (void)dp_vq_should_notify(&vq);
    }
    dp_chain_free(&chain);
    dp_req_cache_clear(&rc);
    free(regions_host[0]);
    free(regions_host[1]);
    return 0;
}

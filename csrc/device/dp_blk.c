#define _GNU_SOURCE
#include "dp_blk.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>

#include "dp_virtio.h"

#define MAX_DISCARD_SECTORS 0x3fffffu
#define SECTOR_SIZE VIRTIO_BLK_SECTOR_SIZE
#define HEADER_SIZE VIRTIO_BLK_HEADER_SIZE
#define DWZ_SEGMENT_SIZE VIRTIO_BLK_DWZ_SEGMENT_SIZE

struct blk_header {
    uint32_t type;
    uint32_t ioprio;
    uint64_t sector;
};

struct dwz_segment {
    uint64_t sector;
    uint32_t num_sectors;
    uint32_t flags;
};

/*
 * blk._split: the sub-pieces covering bytes [skip, skip+take) of p[0..n).
 * As in the reference, take == 0 yields one empty piece when a piece
 * remains past skip.
 */
static uint32_t split(const struct dp_iovec *p, uint32_t n, uint64_t skip, uint64_t take,
                      struct dp_iovec *out)
{
    uint32_t k = 0;

    for (uint32_t i = 0; i < n; i++) {
        uint64_t m;

        if (skip >= p[i].len) {
            skip -= p[i].len;
            continue;
        }
        m = p[i].len - skip < take ? p[i].len - skip : take;
        out[k++] = (struct dp_iovec){p[i].base + skip, m};
        take -= m;
        skip = 0;
        if (!take)
            break;
    }
    return k;
}

static void gather_all(const struct dp_iovec *p, uint32_t n, void *dst)
{
    char *d = dst;

    for (uint32_t i = 0; i < n; i++) {
        memcpy(d, (const void *)(uintptr_t)p[i].base, p[i].len);
        d += p[i].len;
    }
}

/*
 * Copy guest bytes [skip, skip+len) of the pieces into dst (len <= 16: a
 * header or a segment), then a compiler barrier so that the copy, not guest
 * memory, is what gets checked and used.
 */
static void gather(const struct dp_iovec *p, uint32_t n, uint64_t skip, void *dst, size_t len)
{
    struct dp_iovec part[HEADER_SIZE]; /* at most one non-empty piece per byte */
    uint32_t k;

    if (n && skip == 0 && p[0].len >= len && len == HEADER_SIZE) {
        /* The usual framing: the header is its own descriptor.  A fixed-size copy, inlined. */
        memcpy(dst, (const void *)(uintptr_t)p[0].base, HEADER_SIZE);
    } else {
        k = split(p, n, skip, len, part);
        gather_all(part, k, dst);
    }
    __asm__ __volatile__("" ::: "memory");
}

static void scatter(const struct dp_iovec *p, uint32_t n, const void *src)
{
    const char *s = src;

    for (uint32_t i = 0; i < n; i++) {
        memcpy((void *)(uintptr_t)p[i].base, s, p[i].len);
        s += p[i].len;
    }
}

static int aligned(const struct dp_iovec *p, uint32_t n, uint32_t align)
{
    for (uint32_t i = 0; i < n; i++)
        if (p[i].base % align || p[i].len % align)
            return 0;
    return 1;
}

static int in_range(uint64_t sector, uint64_t count, const struct dp_disk *d)
{
    return sector <= d->sectors && count <= d->sectors - sector;
}

static struct dp_req *req_alloc(struct dp_req_cache *rc, uint32_t niov)
{
    struct dp_req *r;
    uint32_t cap = niov > DP_REQ_INLINE_IOV ? niov : DP_REQ_INLINE_IOV;

    if (cap == DP_REQ_INLINE_IOV && rc->free) {
        r = rc->free;
        rc->free = r->next_free;
    } else {
        r = malloc(sizeof(*r) + cap * sizeof(struct dp_iovec));
        if (!r)
            return NULL;
    }
    memset(r, 0, sizeof(*r));
    r->cap = cap;
    return r;
}

void dp_blk_release(struct dp_req_cache *rc, struct dp_req *req)
{
    if (req->bounce) {
        dp_bounce_put(rc->bounce, req->bounce, req->bounce_size);
        req->bounce = NULL;
    }
    if (req->cap == DP_REQ_INLINE_IOV) {
        req->next_free = rc->free;
        rc->free = req;
    } else {
        free(req);
    }
}

void dp_req_cache_clear(struct dp_req_cache *rc)
{
    while (rc->free) {
        struct dp_req *r = rc->free;
        rc->free = r->next_free;
        free(r);
    }
}

int dp_blk_bounce(struct dp_req_cache *rc, struct dp_req *r)
{
    struct dp_io *io = &r->io;
    uint32_t n = io->iovcnt;

    r->bounce = dp_bounce_get(rc->bounce, r->bounce_len, &r->bounce_size);
    if (!r->bounce)
        return -EAGAIN;
    if (io->op == DP_OP_READ) {
        /* The guest pieces move to iov[1..n] (cap >= n + 1), for the copy back. */
        memmove(io->iov + 1, io->iov, n * sizeof(*io->iov));
        r->nbounce_out = n;
    } else {
        gather_all(io->iov, n, r->bounce);
    }
    io->iov[0] = (struct dp_iovec){(uintptr_t)r->bounce, r->bounce_len};
    io->iovcnt = 1;
    return 0;
}

/* IN and OUT: the data moves through the engine, or a bounce buffer if misaligned. */
static void parse_rw(const struct dp_disk *disk, const struct dp_chain *c, struct dp_req *r,
                     int is_read, uint64_t sector, size_t bounce_max)
{
    const struct dp_iovec *out = c->iov, *in = c->iov + c->nout;
    uint64_t length = is_read ? c->in_len - 1 : c->out_len - HEADER_SIZE;
    struct dp_io *io = &r->io;
    uint32_t n;

    if (is_read)
        r->used_len = (uint32_t)c->in_len;
    if (length % SECTOR_SIZE || !in_range(sector, length / SECTOR_SIZE, disk) ||
        (!is_read && disk->read_only) || c->ndesc > (uint64_t)disk->seg_max + 2 ||
        c->longest > disk->size_max) {
        r->status = VIRTIO_BLK_S_IOERR;
        return;
    }
    n = is_read ? split(in, c->nin, 0, length, io->iov)
                : split(out, c->nout, HEADER_SIZE, length, io->iov);
    io->op = is_read ? DP_OP_READ : DP_OP_WRITE;
    io->offset = sector * SECTOR_SIZE;
    io->length = length;
    io->iovcnt = n;
    if (!is_read && !__atomic_load_n(&disk->writeback, __ATOMIC_RELAXED))
        io->flags |= DP_IO_DSYNC;
    if (disk->align > 1 && length && !aligned(io->iov, n, disk->align)) {
        if (length > bounce_max) {
            /* Only past what the config space promises (data in the header's descriptor). */
            r->status = VIRTIO_BLK_S_IOERR;
            return;
        }
        r->bounce_len = length;
    }
    r->has_io = 1;
}

static void parse_dwz(const struct dp_disk *disk, const struct dp_chain *c, struct dp_req *r,
                      int is_discard)
{
    struct dwz_segment seg;
    uint32_t allowed = is_discard ? 0 : VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

    if (disk->read_only) {
        r->status = is_discard ? VIRTIO_BLK_S_UNSUPP : VIRTIO_BLK_S_IOERR;
        return;
    }
    if (c->out_len - HEADER_SIZE != DWZ_SEGMENT_SIZE) {
        r->status = VIRTIO_BLK_S_UNSUPP;
        return;
    }
    gather(c->iov, c->nout, HEADER_SIZE, &seg, sizeof(seg));
    if (seg.flags & ~allowed) {
        r->status = VIRTIO_BLK_S_UNSUPP;
        return;
    }
    if (seg.num_sectors > MAX_DISCARD_SECTORS || !in_range(seg.sector, seg.num_sectors, disk)) {
        r->status = VIRTIO_BLK_S_IOERR;
        return;
    }
    r->io.op = is_discard ? DP_OP_DISCARD : DP_OP_WRITE_ZEROES;
    r->io.offset = seg.sector * SECTOR_SIZE;
    r->io.length = (uint64_t)seg.num_sectors * SECTOR_SIZE;
    if (seg.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)
        r->io.flags |= DP_IO_UNMAP;
    r->has_io = 1;
}

/*
 * The pieces of the chain's device-writable part that r's data goes to: a read's whole
 * length (its data, also when it fails: the kernel may have written some), GET_ID's
 * serial.  Behind everything io may use (cap >= nout + 2 * nin + 1; io takes nin + 1).
 */
static void record_written(const struct dp_chain *c, struct dp_req *r)
{
    uint64_t n = 0;

    if (r->has_io && r->io.op == DP_OP_READ)
        n = r->io.length;
    else if (r->type == VIRTIO_BLK_T_GET_ID)
        n = r->used_len - 1;
    r->logv = r->io.iov + (r->cap - c->nin);
    r->nlog = n ? split(c->iov + c->nout, c->nin, 0, n, r->logv) : 0;
}

int dp_blk_parse(const struct dp_disk *disk, const struct dp_chain *c, struct dp_req_cache *rc,
                 struct dp_req **out, char *msg, size_t msglen)
{
    const struct dp_iovec *in;
    struct dp_iovec status_at = {0, 0};
    struct blk_header hdr;
    struct dp_req *r;

    if (c->out_len < HEADER_SIZE) {
        snprintf(msg, msglen, "head %u: %" PRIu64 " readable bytes, header needs 16", c->head,
                 c->out_len);
        return -DP_GERR_BAD_HEADER;
    }
    if (c->in_len < 1) {
        snprintf(msg, msglen, "head %u: no device-writable byte for the status", c->head);
        return -DP_GERR_BAD_STATUS;
    }
    in = c->iov + c->nout; /* not before: a chain of only empty pieces has no iov array */
    r = req_alloc(rc, c->nout + c->nin + 1 + (rc->log ? c->nin : 0));
    if (!r) {
        snprintf(msg, msglen, "out of memory for a request of %u pieces", c->nout + c->nin);
        return -DP_GERR_NO_MEMORY;
    }
    gather(c->iov, c->nout, 0, &hdr, sizeof(hdr));
    split(in, c->nin, c->in_len - 1, 1, &status_at);
    r->head = c->head;
    r->type = hdr.type;
    r->sector = hdr.sector;
    r->status_at = status_at.base;
    r->used_len = 1;
    r->status = VIRTIO_BLK_S_OK;
    r->io.token = (uint64_t)(uintptr_t)r;
    *out = r;

    switch (hdr.type) {
    case VIRTIO_BLK_T_IN:
    case VIRTIO_BLK_T_OUT:
        parse_rw(disk, c, r, hdr.type == VIRTIO_BLK_T_IN, hdr.sector,
                 rc->bounce ? dp_bounce_max(rc->bounce) : 0);
        break;
    case VIRTIO_BLK_T_FLUSH:
        r->io.op = DP_OP_FLUSH;
        r->has_io = 1;
        break;
    case VIRTIO_BLK_T_GET_ID: {
        uint64_t n = c->in_len - 1 < DP_VIRTIO_BLK_ID_BYTES ? c->in_len - 1
                                                            : DP_VIRTIO_BLK_ID_BYTES;
        struct dp_iovec part[DP_VIRTIO_BLK_ID_BYTES + 1];
        uint32_t k = split(in, c->nin, 0, n, part);

        scatter(part, k, disk->serial);
        r->used_len = (uint32_t)n + 1;
        break;
    }
    case VIRTIO_BLK_T_DISCARD:
    case VIRTIO_BLK_T_WRITE_ZEROES:
        parse_dwz(disk, c, r, hdr.type == VIRTIO_BLK_T_DISCARD);
        break;
    default:
        r->status = VIRTIO_BLK_S_UNSUPP;
        break;
    }
    if (rc->log)
        record_written(c, r);
    return 0;
}

void dp_blk_complete(struct dp_req *req, int64_t result, int has_result)
{
    if (has_result) {
        int rw = req->io.op == DP_OP_READ || req->io.op == DP_OP_WRITE;
        int ok = rw ? result == (int64_t)req->io.length : result >= 0;

        req->status = ok ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
        if (ok && req->nbounce_out)
            scatter(req->io.iov + 1, req->nbounce_out, req->bounce);
    }
    *(volatile uint8_t *)req->status_at = req->status;
}

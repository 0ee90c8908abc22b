#define _GNU_SOURCE
#include "dp_remote.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

void dp_rlist_push(struct dp_rlist *l, struct dp_rreq *r)
{
    r->next = NULL;
    r->prev = l->tail;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
}

void dp_rlist_remove(struct dp_rlist *l, struct dp_rreq *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        l->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        l->tail = r->prev;
    r->prev = r->next = NULL;
    l->n--;
}

struct dp_rreq *dp_rlist_pop(struct dp_rlist *l)
{
    struct dp_rreq *r = l->head;

    if (r)
        dp_rlist_remove(l, r);
    return r;
}

int dp_rq_init(struct dp_rqueue *q, unsigned depth, void *owner)
{
    memset(q, 0, sizeof(*q));
    q->depth = depth ? depth : 1;
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    q->slots = calloc(q->depth, sizeof(*q->slots));
    q->done = calloc(q->depth, sizeof(*q->done));
    if (q->efd < 0 || !q->slots || !q->done) {
        int err = q->efd < 0 ? -errno : -ENOMEM;
        dp_rq_fini(q);
        return err;
    }
    for (unsigned i = 0; i < q->depth; i++) {
        q->slots[i].owner = owner;
        dp_rlist_push(&q->free, &q->slots[i]);
    }
    return 0;
}

void dp_rq_fini(struct dp_rqueue *q)
{
    if (q->slots)
        for (unsigned i = 0; i < q->depth; i++)
            free(q->slots[i].bounce);
    free(q->slots);
    free(q->done);
    if (q->efd >= 0)
        close(q->efd);
    memset(q, 0, sizeof(*q));
    q->efd = -1;
}

struct dp_rreq *dp_rq_get(struct dp_rqueue *q, struct dp_io *io)
{
    struct dp_rreq *r = dp_rlist_pop(&q->free);

    if (!r)
        return NULL;
    r->io = io;
    r->pending = 0;
    r->err = 0;
    r->phase = DP_RREQ_DATA;
    r->lost = 0;
    r->bounced = 0;
    r->lost_at = 0;
    return r;
}

void dp_rq_complete(struct dp_rqueue *q, struct dp_rreq *r, int64_t res)
{
    struct dp_io *io = r->io;

    /* At most depth requests are in flight, so the ring cannot be full here. */
    q->done[(q->done_head + q->ndone) % q->depth] =
        (struct dp_cqe){io->token, res < 0 ? res : (int64_t)io->length};
    q->ndone++;
    r->io = NULL;
    dp_rlist_push(&q->free, r);
}

void dp_rq_zero_from(struct dp_io *io, uint64_t from)
{
    for (uint32_t i = 0; i < io->iovcnt; i++) {
        uint64_t len = io->iov[i].len;

        if (from >= len) {
            from -= len;
            continue;
        }
        memset((char *)(uintptr_t)io->iov[i].base + from, 0, len - from);
        from = 0;
    }
}

unsigned dp_rq_take(struct dp_rqueue *q, struct dp_cqe *out, unsigned max)
{
    unsigned n = 0;

    while (q->ndone && n < max) {
        out[n++] = q->done[q->done_head];
        q->done_head = (q->done_head + 1) % q->depth;
        q->ndone--;
    }
    return n;
}

void dp_rq_signal(struct dp_rqueue *q)
{
    if (q->ndone && !q->efd_set) {
        eventfd_write(q->efd, 1);
        q->efd_set = 1;
    }
}

void dp_rq_drain(struct dp_rqueue *q)
{
    eventfd_t v;

    (void)eventfd_read(q->efd, &v); /* EAGAIN when already clear */
    q->efd_set = 0;
}

int dp_rq_check(const struct dp_remote_info *info, const struct dp_io *io)
{
    int writes = io->op == DP_OP_WRITE || io->op == DP_OP_DISCARD ||
                 io->op == DP_OP_WRITE_ZEROES;

    if (io->op > DP_OP_WRITE_ZEROES)
        return -EINVAL;
    if (writes && (info->flags & DP_REMOTE_READ_ONLY))
        return -EROFS;
    if (io->op == DP_OP_FLUSH)
        return (info->flags & DP_REMOTE_CAN_FLUSH) ? 0 : 1;
    if (io->offset > info->size || io->length > info->size - io->offset)
        return -EIO;
    if (io->op == DP_OP_DISCARD && !(info->flags & DP_REMOTE_CAN_TRIM))
        return -EOPNOTSUPP;
    if (io->op == DP_OP_WRITE_ZEROES && !(info->flags & DP_REMOTE_CAN_ZERO))
        return -EOPNOTSUPP;
    return io->length ? 0 : 1;
}

int dp_rq_needs_flush(const struct dp_remote_info *info, const struct dp_io *io)
{
    return io->op == DP_OP_WRITE && (io->flags & DP_IO_DSYNC) &&
           !(info->flags & DP_REMOTE_CAN_FUA) && (info->flags & DP_REMOTE_CAN_FLUSH);
}

void dp_rq_settle(struct dp_rqueue *q, struct dp_rreq *r, const struct dp_remote_info *info,
                  int (*flush)(void *b, struct dp_rreq *r), void *b)
{
    int ret;

    if (r->err) {
        dp_rq_complete(q, r, r->err);
        return;
    }
    if (r->phase == DP_RREQ_DATA && dp_rq_needs_flush(info, r->io)) {
        r->phase = DP_RREQ_FLUSH;
        ret = flush(b, r);
        if (ret < 0)
            dp_rq_complete(q, r, ret);
        return;
    }
    dp_rq_complete(q, r, (int64_t)r->io->length);
}

#define _GNU_SOURCE
#include "dp_rbd.h"

#include <errno.h>
#include <limits.h>
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

struct dp_rbd {
    struct dp_rqueue q; /* q.efd is also librbd's event socket */
    struct dp_remote_info info;
    rados_t cluster;
    rados_ioctx_t ioctx;
    rbd_image_t image;
    rbd_completion_t *events; /* scratch for rbd_poll_io_events */
};

/* Start librbd's command for r: its data, or its flush phase.  0 or -errno. */
static int start(struct dp_rbd *b, struct dp_rreq *r)
{
    const struct dp_io *io = r->io;
    const struct iovec *iov = (const struct iovec *)io->iov; /* same layout: see dp_io.c */
    rbd_completion_t c;
    int ret;

    /* No callback: librbd queues the completion for rbd_poll_io_events and writes q.efd. */
    ret = rbd_aio_create_completion(r, NULL, &c);
    if (ret < 0)
        return ret;
    if (r->phase == DP_RREQ_FLUSH || io->op == DP_OP_FLUSH)
        ret = rbd_aio_flush(b->image, c);
    else if (io->iovcnt > IOV_MAX)
        ret = -EINVAL;
    else if (io->op == DP_OP_READ)
        ret = rbd_aio_readv(b->image, iov, (int)io->iovcnt, io->offset, c);
    else if (io->op == DP_OP_WRITE)
        ret = rbd_aio_writev(b->image, iov, (int)io->iovcnt, io->offset, c);
    else if (io->op == DP_OP_DISCARD)
        ret = rbd_aio_discard(b->image, io->offset, io->length, c);
    else /* as QEMU's rbd driver: without may-unmap the zeroes are allocated */
        ret = rbd_aio_write_zeroes(b->image, io->offset, io->length, c,
                                   (io->flags & DP_IO_UNMAP) ? 0
                                                             : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION,
                                   0);
    if (ret < 0) {
        rbd_aio_release(c);
        return ret;
    }
    r->pending = 1;
    return 0;
}

static int flush_phase(void *arg, struct dp_rreq *r)
{
    return start(arg, r);
}

/* -- the dp_remote_ops ------------------------------------------------------------------ */

static void rbd_engine_close(void *arg)
{
    struct dp_rbd *b = arg;

    if (!b)
        return;
    if (b->image)
        rbd_close(b->image);
    if (b->ioctx)
        rados_ioctx_destroy(b->ioctx);
    if (b->cluster)
        rados_shutdown(b->cluster);
    dp_rq_fini(&b->q);
    free(b->events);
    free(b);
}

/* Connect to the cluster and open the image; on failure a one-line reason in msg. */
static int connect_image(struct dp_rbd *b, const struct dp_remote_params *p, char *msg,
                         size_t msglen)
{
    unsigned timeout_ms = p->timeout_ms ? p->timeout_ms : DP_REMOTE_OPEN_TIMEOUT_MS;
    char timeout[32];
    int ret;

    ret = rados_create(&b->cluster, p->user);
    if (ret < 0) {
        b->cluster = NULL;
        snprintf(msg, msglen, "cannot create a Ceph client: %s", strerror(-ret));
        return ret;
    }
    ret = rados_conf_read_file(b->cluster, p->conf);
    if (ret < 0 && (p->conf || ret != -ENOENT)) {
        snprintf(msg, msglen, "cannot read the Ceph configuration %s: %s",
                 p->conf ? p->conf : "(default search path)", strerror(-ret));
        return ret;
    }
    snprintf(timeout, sizeof(timeout), "%u", (timeout_ms + 999) / 1000);
    if ((p->keyring && (ret = rados_conf_set(b->cluster, "keyring", p->keyring)) < 0) ||
        (ret = rados_conf_set(b->cluster, "client_mount_timeout", timeout)) < 0) {
        snprintf(msg, msglen, "cannot configure the Ceph client: %s", strerror(-ret));
        return ret;
    }
    ret = rados_connect(b->cluster);
    if (ret < 0) {
        snprintf(msg, msglen, "cannot connect to the Ceph cluster%s%s: %s",
                 p->conf ? " of " : "", p->conf ? p->conf : "",
                 ret == -ENOENT ? "no monitor address (mon_host) configured" : strerror(-ret));
        return ret;
    }
    ret = rados_ioctx_create(b->cluster, p->pool, &b->ioctx);
    if (ret < 0) {
        b->ioctx = NULL;
        snprintf(msg, msglen, "%s %s: %s", ret == -ENOENT ? "no pool" : "cannot open pool",
                 p->pool, ret == -ENOENT ? "it does not exist" : strerror(-ret));
        return ret;
    }
    if (p->ns)
        rados_ioctx_set_namespace(b->ioctx, p->ns);
    if (p->snap || p->read_only)
        ret = rbd_open_read_only(b->ioctx, p->image, &b->image, p->snap);
    else
        ret = rbd_open(b->ioctx, p->image, &b->image, NULL);
    if (ret < 0) {
        rbd_image_t plain;

        b->image = NULL;
        if (ret == -ENOENT && p->snap &&
            rbd_open_read_only(b->ioctx, p->image, &plain, NULL) == 0) {
            rbd_close(plain);
            snprintf(msg, msglen, "image %s has no snapshot %s", p->image, p->snap);
        } else if (ret == -ENOENT) {
            snprintf(msg, msglen, "no image %s in pool %s", p->image, p->pool);
        } else {
            snprintf(msg, msglen, "cannot open image %s: %s", p->image, strerror(-ret));
        }
        return ret;
    }
    return 0;
}

static void *rbd_engine_open(const struct dp_remote_params *p, unsigned depth, char *msg,
                             size_t msglen, int *err)
{
    struct dp_rbd *b = calloc(1, sizeof(*b));
    rbd_image_info_t st;
    uint64_t size;

    *err = b ? dp_rq_init(&b->q, depth, b) : -ENOMEM;
    if (!*err && !(b->events = calloc(b->q.depth, sizeof(*b->events))))
        *err = -ENOMEM;
    if (*err) {
        snprintf(msg, msglen, "%s", strerror(-*err));
        rbd_engine_close(b);
        return NULL;
    }
    if (!p->pool || !p->image) {
        *err = -EINVAL;
        snprintf(msg, msglen, "an RBD image needs a pool and an image name");
        goto fail;
    }
    *err = connect_image(b, p, msg, msglen);
    if (*err)
        goto fail;
    if ((*err = rbd_get_size(b->image, &size)) < 0 ||
        (*err = rbd_stat(b->image, &st, sizeof(st))) < 0 ||
        (*err = rbd_set_image_notification(b->image, b->q.efd, EVENT_TYPE_EVENTFD)) < 0) {
        snprintf(msg, msglen, "cannot use image %s: %s", p->image, strerror(-*err));
        goto fail;
    }
    *err = 0;
    b->info.size = size;
    b->info.flags = DP_REMOTE_CAN_FLUSH | DP_REMOTE_CAN_TRIM | DP_REMOTE_CAN_ZERO;
    if (p->snap || p->read_only)
        b->info.flags |= DP_REMOTE_READ_ONLY;
    b->info.block_min = 1;
    b->info.block_opt = st.obj_size && st.obj_size <= UINT32_MAX ? (uint32_t)st.obj_size : 4096;
    b->info.block_max = 0;
    b->info.connected = 1;
    return b;

fail:
    rbd_engine_close(b);
    return NULL;
}

static int rbd_engine_completion_fd(const void *arg)
{
    return ((const struct dp_rbd *)arg)->q.efd;
}

static int rbd_engine_ready(const void *arg)
{
    return dp_rq_ready(&((const struct dp_rbd *)arg)->q);
}

static int rbd_engine_submit(void *arg, struct dp_io *const *ios, unsigned n)
{
    struct dp_rbd *b = arg;

    if (n > b->q.free.n)
        return -EBUSY;
    for (unsigned i = 0; i < n; i++) {
        struct dp_rreq *r = dp_rq_get(&b->q, ios[i]);
        int ret = dp_rq_check(&b->info, ios[i]);

        if (ret == 0)
            ret = start(b, r);
        if (ret)
            dp_rq_complete(&b->q, r, ret < 0 ? ret : (int64_t)ios[i]->length);
    }
    dp_rq_signal(&b->q);
    return 0;
}

/* Take what librbd finished into our queue.  Drain the eventfd first: a completion
 * librbd queues after the drain writes it again, so none is missed by a wait. */
static void take_events(struct dp_rbd *b)
{
    int k;

    dp_rq_drain(&b->q);
    do {
        k = rbd_poll_io_events(b->image, b->events, (int)b->q.depth);
        for (int i = 0; i < k; i++) {
            struct dp_rreq *r = rbd_aio_get_arg(b->events[i]);
            ssize_t res = rbd_aio_get_return_value(b->events[i]);

            rbd_aio_release(b->events[i]);
            r->pending = 0;
            if (res < 0)
                r->err = (int32_t)res;
            else if (r->io->op == DP_OP_READ && r->phase == DP_RREQ_DATA &&
                     (uint64_t)res < r->io->length)
                dp_rq_zero_from(r->io, (uint64_t)res);
            dp_rq_settle(&b->q, r, &b->info, flush_phase, b);
        }
    } while (k == (int)b->q.depth);
}

static int rbd_engine_prepare_wait(void *arg)
{
    struct dp_rbd *b = arg;

    take_events(b);
    return dp_rq_ready(&b->q);
}

static int rbd_engine_reap(void *arg, struct dp_cqe *out, unsigned max)
{
    struct dp_rbd *b = arg;
    unsigned n;

    take_events(b);
    n = dp_rq_take(&b->q, out, max);
    dp_rq_signal(&b->q); /* what did not fit in out */
    return (int)n;
}

static void rbd_engine_info(const void *arg, struct dp_remote_info *out)
{
    *out = ((const struct dp_rbd *)arg)->info; /* set once at open */
}

const struct dp_remote_ops dp_rbd_ops = DP_REMOTE_OPS(rbd, "rbd");

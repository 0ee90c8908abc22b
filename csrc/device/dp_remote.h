/*
 * What the remote engines (NBD over libnbd in dp_nbd, Ceph RBD over librbd in
 * dp_rbd) share: the description of a remote disk, the parameters that open
 * one, the table of operations that dp_engine dispatches to, and the request
 * skeleton (dp_rq_*): slots for the requests in flight, the queue of finished
 * ones with the eventfd that says it is not empty, and the rules that every
 * remote engine applies (range and capability checks, write-through by a
 * flush, the result convention of dp_io.h).
 *
 * A remote engine runs on the thread that calls it and nowhere else: its
 * client library's callbacks run inside our calls (libnbd) or hand their
 * completions over through the library's own queue (librbd), so nothing here
 * is shared between threads except the counters in dp_remote_info that
 * dp_*_info reads with relaxed atomics.
 */
#ifndef DP_REMOTE_H
#define DP_REMOTE_H

#include <stddef.h>
#include <stdint.h>

#include "dp_io.h"

/* dp_remote_info.flags: what the target allows, for the device's config space. */
#define DP_REMOTE_READ_ONLY 0x01u
#define DP_REMOTE_CAN_FLUSH 0x02u
#define DP_REMOTE_CAN_TRIM 0x04u
#define DP_REMOTE_CAN_ZERO 0x08u
#define DP_REMOTE_CAN_FUA 0x10u        /* write-through without a separate flush */
#define DP_REMOTE_CAN_MULTI_CONN 0x20u /* one connection per dataplane thread is safe */

#define DP_REMOTE_MSG_SIZE 512              /* room for an open error's message */
#define DP_REMOTE_OPEN_TIMEOUT_MS 10000u    /* how long an open may wait for the target */

struct dp_remote_info {
    uint64_t size;       /* bytes */
    uint32_t flags;      /* DP_REMOTE_* */
    uint32_t block_min;  /* smallest I/O the target accepts (1: any) */
    uint32_t block_opt;  /* the size it prefers */
    uint32_t block_max;  /* largest read or write in one command (0: no limit) */
    uint64_t reconnects; /* NBD: connections re-established after a drop */
    uint32_t connected;  /* 0 while an NBD engine waits for its server */
    uint32_t reserved;
};

struct dp_remote_params {
    const char *uri;     /* NBD: nbd://HOST[:PORT]/EXPORT or nbd+unix:///EXPORT?socket=PATH */
    const char *pool;    /* RBD */
    const char *ns;      /* RBD: the pool's namespace, or NULL */
    const char *image;   /* RBD */
    const char *snap;    /* RBD: a snapshot (served read-only), or NULL */
    const char *conf;    /* RBD: ceph.conf, or NULL for Ceph's default search */
    const char *user;    /* RBD: the client id without "client.", or NULL for admin */
    const char *keyring; /* RBD: or NULL for what the conf says */
    uint32_t reconnect_ms; /* NBD: how long requests wait for a dropped server */
    uint32_t timeout_ms;   /* how long the open may wait for the target (0: default) */
    int32_t read_only;     /* refuse writes even if the target allows them */
};

/* One remote engine behind dp_engine; b is the engine's own state. */
struct dp_remote_ops {
    const char *name;
    /* NULL on failure, with *err = -errno and a one-line reason in msg. */
    void *(*open)(const struct dp_remote_params *p, unsigned depth, char *msg, size_t msglen,
                  int *err);
    int (*completion_fd)(const void *b);
    int (*ready)(const void *b);
    /* Before the caller blocks on the completion fd (dp_engine_prepare_wait). */
    int (*prepare_wait)(void *b);
    int (*submit)(void *b, struct dp_io *const *ios, unsigned n);
    int (*reap)(void *b, struct dp_cqe *out, unsigned max);
    void (*info)(const void *b, struct dp_remote_info *out);
    void (*close)(void *b);
};

/* The ops of a remote engine whose functions are named <prefix>_engine_open, ... */
#define DP_REMOTE_OPS(prefix, engine_name)                                                    \
    {                                                                                         \
        .name = engine_name, .open = prefix##_engine_open,                                    \
        .completion_fd = prefix##_engine_completion_fd, .ready = prefix##_engine_ready,       \
        .prepare_wait = prefix##_engine_prepare_wait, .submit = prefix##_engine_submit,       \
        .reap = prefix##_engine_reap, .info = prefix##_engine_info,                           \
        .close = prefix##_engine_close,                                                       \
    }

/* -- the request skeleton ------------------------------------------------------ */

enum { DP_RREQ_DATA = 0, DP_RREQ_FLUSH = 1 }; /* FLUSH: write-through by a flush after */

struct dp_rreq {
    struct dp_io *io;
    void *owner;                /* the engine */
    struct dp_rreq *prev, *next; /* on one dp_rlist at a time */
    uint32_t pending;           /* commands at the target (+1 while being issued) */
    int32_t err;                /* the first command error, or 0 */
    uint8_t phase;              /* DP_RREQ_* */
    uint8_t lost;               /* NBD: a command died with the connection */
    uint8_t bounced;            /* NBD: the data went through bounce */
    uint64_t lost_at;           /* NBD: when it first waited for a connection (0: never) */
    void *bounce;               /* NBD: a gather/scatter buffer, kept between requests */
    size_t bounce_cap;
};

struct dp_rlist {
    struct dp_rreq *head, *tail;
    unsigned n;
};

struct dp_rqueue {
    unsigned depth;
    struct dp_rreq *slots;
    struct dp_rlist free;
    struct dp_cqe *done; /* ring of depth: finished, not yet reaped */
    unsigned done_head, ndone;
    int efd;             /* readable while done is not empty (see dp_rq_signal) */
    int efd_set;
};

void dp_rlist_push(struct dp_rlist *l, struct dp_rreq *r);
void dp_rlist_remove(struct dp_rlist *l, struct dp_rreq *r);
struct dp_rreq *dp_rlist_pop(struct dp_rlist *l);

/* 0 or -errno; owner is stored in every slot. */
int dp_rq_init(struct dp_rqueue *q, unsigned depth, void *owner);
void dp_rq_fini(struct dp_rqueue *q);
/* A slot for io (NULL when all depth are in use). */
struct dp_rreq *dp_rq_get(struct dp_rqueue *q, struct dp_io *io);
/* Finish r with res (-errno, or >= 0 for success: io->length); the slot is free again. */
void dp_rq_complete(struct dp_rqueue *q, struct dp_rreq *r, int64_t res);
/* Zero a read's buffers from byte from on (a short read, as dp_io_account at end of file). */
void dp_rq_zero_from(struct dp_io *io, uint64_t from);
/* Finished requests into out[0..max).  Returns the count. */
unsigned dp_rq_take(struct dp_rqueue *q, struct dp_cqe *out, unsigned max);
static inline int dp_rq_ready(const struct dp_rqueue *q)
{
    return q->ndone != 0;
}
/* Make efd readable if completions wait (call after a submit or a reap). */
void dp_rq_signal(struct dp_rqueue *q);
/* Clear efd (a reap does this first when the library also writes efd). */
void dp_rq_drain(struct dp_rqueue *q);

/*
 * Whether io may go to the target: 0 to issue it, 1 when there is nothing to
 * do (a zero-length transfer, a flush to a target without a cache), or
 * -errno to complete it with: -EINVAL (unknown op), -EROFS (a write to a
 * read-only target), -EIO (past the end: the disk never grows),
 * -EOPNOTSUPP (discard or write-zeroes that the target cannot do).
 */
int dp_rq_check(const struct dp_remote_info *info, const struct dp_io *io);
/* A write-through WRITE on a target without FUA: flush after the data. */
int dp_rq_needs_flush(const struct dp_remote_info *info, const struct dp_io *io);
/*
 * Every command of r is back: complete it, or start its flush phase through
 * flush(b, r), which returns 0 or -errno (r then completes with it).
 */
void dp_rq_settle(struct dp_rqueue *q, struct dp_rreq *r, const struct dp_remote_info *info,
                  int (*flush)(void *b, struct dp_rreq *r), void *b);

#endif

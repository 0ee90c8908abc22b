/*
 * `dataplane serve --record FILE`: the request trace writer in C.
 *
 * The format is dataplane/guest/bench/trace.py's (one line per request,
 * "time_ns queue type sector length"); Python writes the header and hands
 * the fd over, with the type letters, so the format lives in one place.
 *
 * A struct dp_rec is the file, shared by a device's threads (its fd is
 * O_APPEND, and every write() holds whole lines).  Each thread formats its
 * records into its own dp_recbuf and writes the buffer once per pass, or
 * when it fills: no syscall per request.  The Python datapath uses the same
 * functions through cffi.
 */
#ifndef DP_REC_H
#define DP_REC_H

#include <stddef.h>
#include <stdint.h>

#define DP_REC_BUF_SIZE 65536
#define DP_REC_LINE_MAX 96 /* 20 + 1 + 10 + 1 + 1 + 1 + 20 + 1 + 20 + 1, rounded up */

struct dp_rec {
    int fd;
    char letters[8];   /* trace.LETTERS, indexed by enum dp_op */
    uint64_t t0;       /* the first recorded request's time; 0 until then */
    uint64_t max_rw;   /* trace.MAX_LENGTH: a longer (or empty) read or write is not recorded */
    uint64_t count;    /* lines written */
    uint64_t skipped;  /* requests the format cannot hold */
    int error;         /* the first write error (errno); recording stops there */
};

struct dp_recbuf {
    struct dp_rec *rec;
    size_t len;
    uint64_t lines;
    char buf[DP_REC_BUF_SIZE];
};

/* NULL on allocation failure.  The fd stays the caller's. */
struct dp_rec *dp_rec_new(int fd, const char *letters, uint64_t max_rw_length);
void dp_rec_free(struct dp_rec *r);
uint64_t dp_rec_count(const struct dp_rec *r);
int dp_rec_error(const struct dp_rec *r);
uint64_t dp_rec_skipped(const struct dp_rec *r);

struct dp_recbuf *dp_recbuf_new(struct dp_rec *r);
/* Flushes, then frees. */
void dp_recbuf_free(struct dp_recbuf *b);
/*
 * One request that goes to the engine: kind is its enum dp_op, t_ns a
 * CLOCK_MONOTONIC time.  A read or write of 0 or more than max_rw bytes,
 * which the format cannot hold, is counted in skipped instead.
 */
void dp_recbuf_add(struct dp_recbuf *b, uint64_t t_ns, unsigned queue, unsigned kind,
                   uint64_t sector, uint64_t length);
/* Write what is buffered: 0, or -errno (also kept in rec->error). */
int dp_recbuf_flush(struct dp_recbuf *b);

static inline int dp_recbuf_pending(const struct dp_recbuf *b)
{
    return b->len != 0;
}

#endif

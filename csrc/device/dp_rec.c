#include "dp_rec.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dp_io.h"

struct dp_rec *dp_rec_new(int fd, const char *letters, uint64_t max_rw_length)
{
    struct dp_rec *r = calloc(1, sizeof(*r));

    if (!r)
        return NULL;
    r->fd = fd;
    r->max_rw = max_rw_length;
    strncpy(r->letters, letters, sizeof(r->letters) - 1);
    return r;
}

void dp_rec_free(struct dp_rec *r)
{
    free(r);
}

uint64_t dp_rec_count(const struct dp_rec *r)
{
    return __atomic_load_n(&r->count, __ATOMIC_RELAXED);
}

uint64_t dp_rec_skipped(const struct dp_rec *r)
{
    return __atomic_load_n(&r->skipped, __ATOMIC_RELAXED);
}

int dp_rec_error(const struct dp_rec *r)
{
    return __atomic_load_n(&r->error, __ATOMIC_RELAXED);
}

struct dp_recbuf *dp_recbuf_new(struct dp_rec *r)
{
    struct dp_recbuf *b = malloc(sizeof(*b));

    if (!b)
        return NULL;
    b->rec = r;
    b->len = 0;
    b->lines = 0;
    return b;
}

void dp_recbuf_free(struct dp_recbuf *b)
{
    if (!b)
        return;
    dp_recbuf_flush(b);
    free(b);
}

/* Decimal digits of v at p; returns the end.  (snprintf costs more than the whole request.) */
static char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int n = 0;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

void dp_recbuf_add(struct dp_recbuf *b, uint64_t t_ns, unsigned queue, unsigned kind,
                   uint64_t sector, uint64_t length)
{
    struct dp_rec *r = b->rec;
    uint64_t t0 = __atomic_load_n(&r->t0, __ATOMIC_RELAXED), expect = 0;
    char *p;

    if (__atomic_load_n(&r->error, __ATOMIC_RELAXED) || kind >= strlen(r->letters))
        return;
    if ((kind == DP_OP_READ || kind == DP_OP_WRITE) && (length == 0 || length > r->max_rw)) {
        __atomic_add_fetch(&r->skipped, 1, __ATOMIC_RELAXED);
        return;
    }
    if (!t0) {
        /* The first request of the trace, over all threads, is time 0. */
        if (__atomic_compare_exchange_n(&r->t0, &expect, t_ns, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            t0 = t_ns;
        else
            t0 = expect;
    }
    if (DP_REC_BUF_SIZE - b->len < DP_REC_LINE_MAX)
        dp_recbuf_flush(b);
    p = b->buf + b->len;
    p = put_u64(p, t_ns > t0 ? t_ns - t0 : 0); /* as TraceWriter: never negative */
    *p++ = ' ';
    p = put_u64(p, queue);
    *p++ = ' ';
    *p++ = r->letters[kind];
    *p++ = ' ';
    p = put_u64(p, sector);
    *p++ = ' ';
    p = put_u64(p, length);
    *p++ = '\n';
    b->len = (size_t)(p - b->buf);
    b->lines++;
}

int dp_recbuf_flush(struct dp_recbuf *b)
{
    struct dp_rec *r = b->rec;
    size_t off = 0;
    int err = 0;

    while (off < b->len && !err) {
        ssize_t n = write(r->fd, b->buf + off, b->len - off);

        if (n > 0)
            off += (size_t)n;
        else if (n < 0 && errno == EINTR)
            continue;
        else
            err = n < 0 ? errno : EIO;
    }
    if (err) {
        int none = 0;
        __atomic_compare_exchange_n(&r->error, &none, err, 0, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED);
    } else {
        __atomic_add_fetch(&r->count, b->lines, __ATOMIC_RELAXED);
    }
    b->len = 0;
    b->lines = 0;
    return err ? -err : 0;
}

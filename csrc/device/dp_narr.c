#include "dp_narr.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp_virtio.h"

/* Room for n more bytes plus a NUL; on allocation failure the line is lost, not the process. */
static int reserve(struct dp_narr_buf *b, size_t n)
{
    size_t cap = b->cap ? b->cap : 1024;
    char *p;

    if (b->len + n + 1 <= b->cap)
        return 0;
    while (cap < b->len + n + 1)
        cap *= 2;
    p = realloc(b->buf, cap);
    if (!p)
        return -1;
    b->buf = p;
    b->cap = cap;
    return 0;
}

void dp_narr_add(struct dp_narr *n, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    int k;

    va_start(ap, fmt);
    k = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (k < 0)
        return;
    if ((size_t)k >= sizeof(line))
        k = sizeof(line) - 1;
    if (reserve(&n->scratch, (size_t)k + 1))
        return;
    memcpy(n->scratch.buf + n->scratch.len, line, (size_t)k);
    n->scratch.len += (size_t)k;
    n->scratch.buf[n->scratch.len++] = '\n';
    n->scratch.buf[n->scratch.len] = '\0';
}

void dp_narr_commit(struct dp_narr *n, const char *prefix)
{
    size_t plen = strlen(prefix), i = 0;

    while (i < n->scratch.len) {
        const char *nl = memchr(n->scratch.buf + i, '\n', n->scratch.len - i);
        size_t k = (nl ? (size_t)(nl - n->scratch.buf) : n->scratch.len) - i + 1;

        if (reserve(&n->out, plen + k))
            break;
        memcpy(n->out.buf + n->out.len, prefix, plen);
        memcpy(n->out.buf + n->out.len + plen, n->scratch.buf + i, k);
        n->out.len += plen + k;
        n->out.buf[n->out.len] = '\0';
        i += k;
    }
    dp_narr_drop(n);
}

void dp_narr_drop(struct dp_narr *n)
{
    n->scratch.len = 0;
}

void dp_narr_free(struct dp_narr *n)
{
    free(n->scratch.buf);
    free(n->out.buf);
    memset(n, 0, sizeof(*n));
}

const char *dp_narr_desc_flags(uint16_t flags, char *out, size_t outlen)
{
    static const char *const names[] = {"NEXT", "WRITE", "INDIRECT"};
    size_t len = 0;

    out[0] = '\0';
    for (unsigned i = 0; i < 3; i++)
        if (flags & (1u << i))
            len += (size_t)snprintf(out + len, outlen - len, "%s%s", len ? "|" : "", names[i]);
    if (flags & ~7u)
        len += (size_t)snprintf(out + len, outlen - len, "%s%#x", len ? "|" : "", flags & ~7u);
    if (!len)
        snprintf(out, outlen, "-");
    return out;
}

const char *dp_narr_type_name(uint32_t type)
{
    switch (type) {
    case VIRTIO_BLK_T_IN: return "IN";
    case VIRTIO_BLK_T_OUT: return "OUT";
    case VIRTIO_BLK_T_FLUSH: return "FLUSH";
    case VIRTIO_BLK_T_GET_ID: return "GET_ID";
    case VIRTIO_BLK_T_DISCARD: return "DISCARD";
    case VIRTIO_BLK_T_WRITE_ZEROES: return "WRITE_ZEROES";
    default: return "unknown";
    }
}

const char *dp_narr_status_name(uint8_t status)
{
    switch (status) {
    case VIRTIO_BLK_S_OK: return "OK";
    case VIRTIO_BLK_S_IOERR: return "IOERR";
    case VIRTIO_BLK_S_UNSUPP: return "UNSUPP";
    default: return "?";
    }
}

int64_t dp_budget_take(struct dp_budget *b)
{
    int64_t n = __atomic_add_fetch(&b->taken, 1, __ATOMIC_RELAXED);

    return n <= b->limit ? n : 0;
}

/*
 * The request narrative of `dataplane serve --trace-requests N`, in C.
 *
 * While a request is traced, the thread's loop appends plain-words lines
 * (the avail idx and head, each descriptor, the header, the I/O, the used
 * idx and the notify decision: csrc/device/dp_loop_narr.c, the ring's steps as
 * dp_vq reports them through struct dp_vq_events) to a dp_narr.  Lines go first to a scratch
 * buffer without a prefix; the thread then commits them under the request's
 * prefix ("trace #3 q0: ") or drops them.  Python logs the committed text
 * after dp_thread_run returns.  The wording is the Python reference's
 * (dataplane/device/narrate.py) word for word, so that both datapaths narrate the
 * same ring the same way.
 *
 * Nothing here runs unless tracing is on: the hooks are behind a NULL check.
 */
#ifndef DP_NARR_H
#define DP_NARR_H

#include <stddef.h>
#include <stdint.h>

struct dp_narr_buf {
    char *buf;
    size_t len;
    size_t cap;
};

struct dp_narr {
    struct dp_narr_buf scratch; /* lines of the step in progress, unprefixed */
    struct dp_narr_buf out;     /* committed lines, for Python to log */
};

/* Append one line (a newline is added) to the scratch buffer. */
void dp_narr_add(struct dp_narr *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Move the scratch lines to the output, each prefixed with prefix. */
void dp_narr_commit(struct dp_narr *n, const char *prefix);
void dp_narr_drop(struct dp_narr *n);
void dp_narr_free(struct dp_narr *n);

/* Descriptor flags in words: "NEXT|WRITE", unknown bits in hex, "-" for none. */
const char *dp_narr_desc_flags(uint16_t flags, char *out, size_t outlen);
/* VIRTIO_BLK_T_* and VIRTIO_BLK_S_* names. */
const char *dp_narr_type_name(uint32_t type);
const char *dp_narr_status_name(uint8_t status);

/*
 * The trace budget, shared by a device's threads: take() returns the next
 * request number (1, 2, ...) while fewer than limit were taken, else 0.
 */
struct dp_budget {
    int64_t limit;
    int64_t taken;
};
int64_t dp_budget_take(struct dp_budget *b);

#endif

/*
 * The NBD engine's state, shared by its two halves (not for Python):
 *
 * - dp_nbd_conn.c: the connection: libnbd handles, connecting, losing and
 *   re-establishing it, and the socket and timer in the engine's epoll;
 * - dp_nbd.c: the requests (issuing commands, bounce buffers, waiting for a
 *   server that is gone) and the dp_remote_ops.
 *
 * What the engine does is told in dp_nbd.h.
 */
#ifndef DP_NBD_CONN_H
#define DP_NBD_CONN_H

#include <stdint.h>
#include <time.h>

#include "dp_nbd.h"

struct nbd_handle;

#define RETRY_MIN_MS 50u
#define RETRY_MAX_MS 1000u
#define ATTEMPT_MS 5000u        /* one reconnect attempt, e.g. a TCP connect that hangs */
#define BOUNCE_MAX (1u << 20)   /* the largest request that goes through a bounce buffer */
#define BOUNCE_KEEP (256u << 10) /* bounce buffers above this are freed after use */
#define NS_PER_MS 1000000ull

enum { NBD_DOWN, NBD_CONNECTING, NBD_UP };
enum { TAG_SOCK = 1, TAG_TIMER = 2, TAG_DONE = 3 };

struct dp_nbd {
    struct dp_rqueue q;
    struct dp_remote_info info; /* reconnects and connected: atomics (see nbd_info) */
    char *uri;
    uint64_t reconnect_ns;
    uint64_t piece_max;          /* bytes per read or write command */
    uint64_t zero_max;           /* bytes per trim or zero command */
    struct nbd_handle *h;        /* NULL while down */
    int state;
    int epfd;                    /* the completion fd */
    int tfd;
    uint64_t timer_at;           /* when tfd fires (absolute), 0: disarmed */
    int sock;                    /* h's fd as registered in epfd, or -1 */
    uint32_t sock_events;
    struct dp_rlist active;      /* commands at the current connection */
    struct dp_rlist waiting;     /* for a connection */
    struct dp_rlist settled;     /* every command back, to finish outside libnbd's callbacks */
    uint64_t lost_at;            /* when the connection dropped; 0 while up */
    uint64_t next_expiry;        /* the earliest deadline of a waiting request, 0: none */
    uint64_t retry_at;           /* DOWN: the next attempt */
    uint64_t attempt_end;        /* CONNECTING: give this attempt up */
    unsigned retry_ms;
    int expired;                 /* down for reconnect_ns: new requests fail until a reconnect */
    int drop;                    /* the server is shutting down: treat as a drop */
    char why[DP_REMOTE_MSG_SIZE]; /* why the last reconnect attempt failed */
};

static inline uint64_t dp_nbd_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The earlier of two deadlines, 0 meaning none. */
static inline uint64_t dp_nbd_earlier(uint64_t a, uint64_t b)
{
    return !a ? b : !b ? a : a < b ? a : b;
}

/* -- the connection (dp_nbd_conn.c) -- */

/* libnbd's message without the "nbd_xxx: " of the call that failed. */
const char *dp_nbd_reason(void);
int dp_nbd_errno(void);
struct nbd_handle *dp_nbd_new_handle(void);
uint32_t dp_nbd_handle_flags(struct nbd_handle *h);
void dp_nbd_set_limits(struct dp_nbd *n, struct nbd_handle *h);
/* Drive a connect to ready, for at most timeout_ms.  0, or -errno with libnbd's reason. */
int dp_nbd_connect_blocking(struct nbd_handle *h, const char *uri, unsigned timeout_ms,
                            const char **why);
void dp_nbd_update_direction(struct dp_nbd *n);
void dp_nbd_drop_handle(struct dp_nbd *n);
/* After any libnbd call: follow the connection, finish what settled, then re-arm the waits. */
void dp_nbd_stabilize(struct dp_nbd *n);
void dp_nbd_on_timer(struct dp_nbd *n);
void dp_nbd_on_socket(struct dp_nbd *n, uint32_t events);

/* -- the requests (dp_nbd.c) -- */

struct dp_rreq;
void dp_nbd_issue(struct dp_nbd *n, struct dp_rreq *r);
/* r waits for a connection and then starts over from its data, or fails past its deadline. */
void dp_nbd_wait_for_server(struct dp_nbd *n, struct dp_rreq *r);
void dp_nbd_process_settled(struct dp_nbd *n);
void dp_nbd_expire_waiting(struct dp_nbd *n, uint64_t now);

#endif

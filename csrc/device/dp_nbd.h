/*
 * The NBD engine: a remote disk served by an NBD server (qemu-nbd, nbdkit, ...)
 * through libnbd's asynchronous API, in the dataplane thread's one wait.
 *
 * The engine's completion fd is an epoll fd of its own, which is itself
 * pollable: it holds the libnbd socket (with the direction that
 * nbd_aio_get_direction asks for, updated after every libnbd call), a timerfd
 * for reconnecting, and the eventfd of finished requests.  A reap runs
 * whatever of these is ready (nbd_aio_notify_read/write, the timer) and hands
 * back what finished; libnbd's completion callbacks run inside those calls.
 *
 * A read or write whose iovecs make one host-contiguous run (adjacent iovecs
 * merged) goes straight between guest memory and the socket.  One of several
 * runs goes through a per-slot bounce buffer, up to 1 MiB: libnbd has no preadv,
 * and one NBD command per run would multiply the commands and could cut the
 * data off the server's minimum block size (which libnbd's strict mode refuses).
 * Above 1 MiB the runs go direct, one command each, if each is aligned to the
 * server's minimum, and the request fails with -EINVAL if not, so that a guest
 * cannot make the engine allocate without bound.  Commands above the server's
 * maximum (32 MiB at most), and trims and zeroes above 1 GiB, are split; a
 * request finishes when all its commands are back.
 *
 * A dropped connection is retried for reconnect_ms: requests wait meanwhile
 * and are resubmitted whole after the reconnect (every NBD command is
 * idempotent).  A request fails with -EIO once it has waited reconnect_ms,
 * counted from when it first lost its connection (so a server that drops every
 * connection cannot hold it forever), and while the server has been gone that
 * long new requests fail at once, until a reconnect succeeds (QEMU's
 * reconnect-delay).  Reconnects back off from 50 ms to 1 s until a command
 * succeeds again.  No request is lost.
 */
#ifndef DP_NBD_H
#define DP_NBD_H

#include "dp_remote.h"

#define DP_NBD_RECONNECT_MS_DEFAULT 10000u
#define DP_NBD_PAYLOAD_MAX (32u << 20) /* the NBD spec's limit without a server maximum */
#define DP_NBD_ZERO_MAX (1u << 30)     /* one trim or zero command (the wire has 32 bits) */

extern const struct dp_remote_ops dp_nbd_ops;

#endif

/*
 * The Ceph RBD engine: an RBD image (or one of its snapshots, read-only)
 * through librbd's C API, in the dataplane thread's one wait.
 *
 * readv, writev, flush, discard and write-zeroes go to librbd as aio
 * requests.  Their completions are not callbacks: librbd queues each
 * finished one and writes our eventfd (rbd_set_image_notification with
 * EVENT_TYPE_EVENTFD), which is the engine's completion fd, and the reap
 * takes them with rbd_poll_io_events on our thread.  librbd's own threads
 * never touch our state; its queue is its own to synchronise.
 *
 * RBD has no FUA: a write-through write is the write, then a flush.  One
 * image handle per engine, and no multi-connection: two handles of an image
 * with exclusive-lock would take the lock from each other on every write.
 */
#ifndef DP_RBD_H
#define DP_RBD_H

#include "dp_remote.h"

extern const struct dp_remote_ops dp_rbd_ops;

#endif

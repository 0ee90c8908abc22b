/*
 * Eventfd reads and writes that never block, whatever the frontend does.
 *
 * Kick, call and err eventfds come from the frontend, which shares their
 * file description with us: it can clear O_NONBLOCK on it at any moment
 * (fcntl F_SETFL acts on the description, not on our fd).  So the data path
 * never relies on O_NONBLOCK for them:
 *
 * - Reads (draining a kick) use preadv2(RWF_NOWAIT), which the kernel honours
 *   per call on eventfds (checked on Linux 6.18: EAGAIN when the count is 0,
 *   even on a blocking description).  Where RWF_NOWAIT is refused
 *   (EOPNOTSUPP, older kernels), a zero-timeout poll for POLLIN comes first.
 * - Writes (signalling a call or err eventfd) cannot use RWF_NOWAIT: an
 *   eventfd has no write_iter, so pwritev2 with any flag fails with
 *   EOPNOTSUPP (checked on 6.18).  An eventfd write of 1 blocks only when the
 *   count is 0xfffffffffffffffe, exactly when poll reports no POLLOUT; so a
 *   zero-timeout poll for POLLOUT comes first, and a full eventfd drops that
 *   notification (DP_FDIO_FULL; the caller counts it and logs it once).
 *
 *   The residual race: between that poll and the write, another writer of
 *   the same eventfd (only a hostile frontend) raises the count to the
 *   maximum and clears O_NONBLOCK.  The write then blocks until someone reads
 *   the eventfd.  The control plane closes the race: when the connection
 *   drops, the session reads every call and err eventfd it holds (through its
 *   own fd of the same description, with RWF_NOWAIT), which wakes the thread.
 *   Such a frontend stalls only its own device, and only until it goes.
 */
#ifndef DP_FDIO_H
#define DP_FDIO_H

#define DP_FDIO_FULL 1 /* dp_fdio_signal: the eventfd is full, the notification was dropped */

/* Clear an eventfd: 1 if it had a count, 0 if it was clear, or -errno. */
int dp_fdio_drain(int fd);
/* Add 1 to an eventfd: 0, DP_FDIO_FULL (dropped), or -errno. */
int dp_fdio_signal(int fd);

#endif

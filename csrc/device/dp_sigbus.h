/*
 * SIGBUS containment: guest RAM that shrinks under our mapping costs its
 * device, not the process.
 *
 * Guest RAM is a file (a memfd) that the frontend shares with us and that we
 * map MAP_SHARED.  memory.py checks every region against the file's size
 * before mapping it, but the frontend keeps the file: if it truncates it
 * later, every access to a page past the new end raises SIGBUS (BUS_ADRERR)
 * in whichever thread touched it, whose default action kills the process
 * and every device in it.  QEMU's memory-backend-memfd seals its memfds
 * against shrinking (F_SEAL_SHRINK) by default, and SET_MEM_TABLE logs a
 * warning for a region whose file could shrink; this module handles the
 * frontends that do it anyway.
 *
 * The design: a process-wide SIGBUS handler (SA_SIGINFO, installed once)
 * and a fixed table of the address ranges of every mapped guest region.
 * When si_addr lies in a registered range, the handler maps anonymous
 * zero-filled memory over the whole range (mmap MAP_FIXED), counts the
 * fault in that range's slot, writes the wake eventfd (if one was set) and
 * returns: the faulting instruction runs again, on the anonymous page, and
 * the thread goes on.  From then on that region is private scratch memory:
 * the guest can no longer see our writes nor we its, so the control plane,
 * woken by the eventfd, finds the region's faults (dp_sigbus_faults), marks
 * the device's rings broken and drops the connection; the next connection
 * maps fresh memory.  A fault anywhere else is not ours: the handler hands
 * it to the handler that was installed before (Python's faulthandler in a
 * test run), or restores the default action and returns, so that the fault
 * repeats and kills the process as it would have.
 *
 * It covers both data paths and every thread: the C ring walker, the
 * engines' bounce copies, and the Python reference, whose memoryview reads
 * of guest memory are memcpy calls in this same process.  The kernel's own
 * accesses (io_uring or AIO reading into a truncated page) never raise a
 * signal: they fail with EFAULT, which becomes an IOERR status.
 *
 * Async-signal safety: the handler reads only the slot table, with atomic
 * loads, and calls only mmap, write and sigaction (system calls).  A slot is
 * published by storing its start, then its end with release ordering; the
 * handler loads end with acquire ordering, then start, so that a non-zero
 * end always comes with its start.  Clearing a slot stores end = 0.
 *
 * Limits: the table has DP_SIGBUS_SLOTS ranges for the whole process.  A
 * connection's table holds at most MAX_MEM_SLOTS guest regions
 * (dataplane/device/memory.py: 256, what GET_MAX_MEM_SLOTS offers), and an
 * ADD_MEM_REG past that cap is a protocol error of that connection only;
 * with its inflight area (and, for a moment, the regions of a table being
 * replaced) a hostile frontend holds about 257 slots, so some 60
 * connections can hold their full share at once.  Past the table,
 * dp_sigbus_register fails and the connection that asked is dropped; the
 * others keep their regions.  (The handler scans the table only when a
 * SIGBUS arrives: its size costs nothing while nothing faults.)
 *
 * A region is unregistered before it is unmapped, and only once no
 * dataplane thread uses it (every thread's set_memory has returned), so no
 * fault in it can race with its unmapping.  The handler cannot tell a guest
 * region that shrank from one that a bug of ours overran into the next
 * page; both are contained the same way.  Writes the thread made to the
 * region after the fault are lost with the anonymous memory.
 */
#ifndef DP_SIGBUS_H
#define DP_SIGBUS_H

#include <stdint.h>

#define DP_SIGBUS_SLOTS 16384

/* Install the handler (once per process; later calls do nothing): 0 or -errno. */
int dp_sigbus_install(void);
/* The eventfd the handler writes after containing a fault; -1: none. */
void dp_sigbus_set_wake_fd(int fd);
/* Watch [start, start+len) (a whole mapping): its slot, or -ENOSPC. */
int dp_sigbus_register(uintptr_t start, uint64_t len);
void dp_sigbus_unregister(int slot);
/* Faults contained in the slot's range so far, and the address of the last one. */
uint64_t dp_sigbus_faults(int slot);
uintptr_t dp_sigbus_fault_addr(int slot);

#endif

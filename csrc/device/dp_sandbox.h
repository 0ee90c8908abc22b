/*
 * The seccomp allow-list of the calling thread (dataplane/device/sandbox/), through libseccomp.
 *
 * dp_sandbox_load() installs a filter that allows the named system calls and
 * kills the process on any other (SECCOMP_RET_KILL_PROCESS), or, with log set,
 * allows and logs it (SECCOMP_RET_LOG: the kernel log's "audit: type=1326"
 * lines).  The filter covers the calling thread and the threads it creates
 * from then on; with tsync, every thread of the process (the control list,
 * loaded first).  Filters stack: a thread that loads a second list may make
 * only the calls both allow.  clone3 answers ENOSYS, so that glibc falls back
 * to clone, whose flags a filter can read: a list that allows clone allows
 * only threads (CLONE_THREAD), never a new process.
 */
#ifndef DP_SANDBOX_H
#define DP_SANDBOX_H

/* 0, or -errno; *bad (when not NULL) is the index of a name libseccomp does not know, or -1. */
int dp_sandbox_load(const char *const *names, unsigned n, int log, int tsync, int *bad);

#endif

"""The allow-list of a dataplane thread (one per device, or per group of its queues).

Loaded by the thread itself before its first run, on top of the control list it
inherited (filters stack: a call must pass both).  What a dataplane thread does:
the loop of csrc/device/dp_thread.c (wait, reap, pop, submit, notify), the Python
reference datapath's same loop, the commands the control plane hands it between
runs (ring start/stop, new guest memory, dirty log on/off), and, at the end,
closing its engine.  Its engine and guest memory were opened and mapped by the
control thread: it opens nothing, connects nowhere (NBD aside), starts no process.

Each entry: the system call (libseccomp's x86_64 name) and why the thread makes it.
"""

ALLOW: dict[str, str] = {
    # the rings' eventfds and the engines' I/O
    "read": "kick and completion eventfds; the Python datapath's eventfd reads",
    "write": "call and err eventfds, the control eventfd; log lines to stderr",
    "readv": "the threads engine's reads (os.readv fallback)",
    "writev": "the threads engine's writes; logging",
    "pread64": "the threads/Python engines: a read at an offset",
    "pwrite64": "the threads/Python engines: a write at an offset",
    "preadv": "the threads engine (os.preadv), C pool engine",
    "pwritev": "the threads engine (os.pwritev), C pool engine",
    "preadv2": "the C pool engine (RWF flags)",
    "pwritev2": "the threads engine's FUA writes (RWF_DSYNC)",
    "fsync": "FLUSH on the synchronous engines",
    "fdatasync": "FLUSH on the synchronous engines",
    "fallocate": "DISCARD and WRITE_ZEROES on the synchronous engines",
    "io_uring_enter": "the io_uring engine: submit and reap",
    "io_uring_register": "the io_uring engine: register guest memory on SET_MEM_TABLE",
    "io_submit": "the Linux AIO engine: submit",
    "io_getevents": "the Linux AIO engine: reap",
    "io_pgetevents": "libaio's reap on newer glibc",
    "io_cancel": "the Linux AIO engine: never used on success paths, closing only",
    "io_destroy": "the Linux AIO engine: closed on the thread at its end",
    "close": "a replaced call/kick/err eventfd (the thread owns them); engine close at the end",
    # the one blocking wait
    "epoll_wait": "the loop's one blocking wait",
    "epoll_pwait": "the loop's one blocking wait (glibc's epoll_wait)",
    "epoll_pwait2": "the loop's one blocking wait (timeout in ns)",
    "epoll_ctl": "a ring's kick fd added to or removed from the thread's epoll",
    "poll": "the Python datapath's wait; libnbd",
    "ppoll": "the Python datapath's wait; libnbd",
    "timerfd_settime": "the test-delay stage's timer; the NBD engine's reconnect timer",
    "timerfd_gettime": "the NBD engine's reconnect timer",
    # time, locks, memory, signals: the C runtime and CPython
    "futex": "locks and conditions (the GIL, the command queue, futures, librbd)",
    "clock_gettime": "latency stamps and poll windows (vDSO, except under some clocks)",
    "clock_nanosleep": "the test-delay stage; CPython's time.sleep",
    "nanosleep": "glibc's sleep",
    "gettimeofday": "vDSO fallback",
    "sched_yield": "spin-waits in glibc and librbd",
    "mmap": "malloc's arenas for CPython and librbd buffers; bounce memory",
    "munmap": "malloc's arenas; bounce memory freed",
    "mremap": "realloc of large blocks",
    "madvise": "malloc trimming; the thread's stack at its exit",
    "mprotect": "malloc growing a thread arena's heap",
    "brk": "malloc's main arena",
    "rt_sigprocmask": "glibc blocks signals around thread exit and in librbd",
    "rt_sigreturn": "return from a signal handler (SIGBUS on truncated guest memory)",
    "sigaltstack": "CPython's faulthandler and thread exit",
    "getpid": "logging records and glibc",
    "gettid": "glibc and logging",
    "getrandom": "malloc's tcache randomisation; CPython hashing",
    "restart_syscall": "a wait interrupted by a signal",
    "exit": "the thread ends",
    "exit_group": "the process ends (a fatal error on this thread)",
}

# Calls only the remote engines' threads make, loaded only where that engine runs.
ENGINE_ALLOW: dict[str, dict[str, str]] = {
    "nbd": {
        "socket": "reconnecting to a lost NBD server (dp_nbd_conn.c) happens on this thread",
        "connect": "reconnecting to the NBD server",
        "getsockopt": "libnbd: the connect's result (SO_ERROR)",
        "setsockopt": "libnbd: TCP_NODELAY",
        "getsockname": "libnbd",
        "getpeername": "libnbd",
        "sendmsg": "libnbd: NBD commands",
        "recvmsg": "libnbd: NBD replies",
        "sendto": "libnbd: NBD commands (send)",
        "recvfrom": "libnbd: NBD replies (recv)",
        "shutdown": "libnbd: closing a lost connection",
        "fcntl": "libnbd: the new socket non-blocking, close-on-exec",
        "newfstatat": "glibc's getaddrinfo on a reconnect",
        "openat": "glibc's getaddrinfo on a reconnect (/etc/hosts, /etc/gai.conf)",
        "uname": "glibc's getaddrinfo",
    },
    # librbd queues our requests to its own threads (started on the control thread, so
    # under the control list); on ours it only locks, allocates and signals them.
    "rbd": {
        "unlink": "librados' shutdown, when the engine closes on this thread at its end, "
        "removes its admin socket file",
    },
}

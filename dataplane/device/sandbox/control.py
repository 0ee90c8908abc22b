"""The allow-list of the control plane: the main thread and every thread it starts.

Loaded once, after start-up (sockets bound, images open, the user switched), on
every thread of the process at once (TSYNC): the event loop (uvloop or asyncio),
the asyncio executor, the metrics HTTP server, the threads engine's workers,
librbd's and librados' own threads.  Threads started later inherit it;
dataplane threads narrow it with their own list (iothread.py).

The control plane keeps what serving needs: the vhost-user and management
sockets (accept, SCM_RIGHTS), guest memory (mmap of the frontend's fds),
inflight areas (memfd), images opened by add-device, engines set up
(io_uring_setup, io_setup), threads started, CPython's imports.  What it loses:
starting programs (execve, fork: clone without CLONE_THREAD), changing
identity, debugging other processes, mounts and namespaces, kernel modules,
BPF, keyrings, raw I/O ports, reboot.

Each entry: the system call (libseccomp's x86_64 name) and why it is needed.
"""

from dataplane.device.sandbox.iothread import ALLOW as _IOTHREAD
from dataplane.device.sandbox.iothread import ENGINE_ALLOW as _ENGINES

_SOCKETS: dict[str, str] = {
    "socket": "device sockets bound by add-device; sd_notify; Ceph and NBD connections",
    "socketpair": "uvloop's and asyncio's self-pipes",
    "bind": "add-device's socket",
    "listen": "add-device's socket",
    "accept": "a frontend or management client connects",
    "accept4": "a frontend or management client connects (uvloop)",
    "connect": "sd_notify; librados to the monitors; NBD at open",
    "getsockname": "the metrics server's port; uvloop",
    "getpeername": "uvloop's transports",
    "getsockopt": "SO_PEERCRED of management clients; connect results",
    "setsockopt": "socket options (uvloop, librados, the metrics server)",
    "sendmsg": "vhost-user replies (with fds: GET_INFLIGHT_FD)",
    "recvmsg": "vhost-user messages and their fds (SCM_RIGHTS)",
    "sendto": "management and metrics replies; sd_notify",
    "recvfrom": "management requests; metrics requests",
    "sendmmsg": "librados' messenger",
    "recvmmsg": "librados' messenger",
    "shutdown": "closing connections",
}

_FILES: dict[str, str] = {
    "open": "images opened by add-device; CPython imports",
    "openat": "images opened by add-device; CPython imports; /proc/self reads",
    "openat2": "glibc's open on newer kernels",
    "creat": "--record files",
    "stat": "CPython imports",
    "lstat": "path checks (stale sockets)",
    "fstat": "image sizes; CPython",
    "newfstatat": "image sizes, path checks; CPython",
    "statx": "glibc's stat",
    "statfs": "librados' start-up",
    "fstatfs": "glibc's statvfs (librados)",
    "access": "CPython's os.access and import checks",
    "faccessat": "CPython's os.access and import checks",
    "faccessat2": "CPython's os.access and import checks",
    "readlink": "CPython's path resolution (os.path.realpath)",
    "readlinkat": "CPython's path resolution (os.path.realpath)",
    "getdents64": "CPython imports (directory listings)",
    "getcwd": "CPython's os.path.abspath of relative paths",
    "lseek": "image sizes (SEEK_END); CPython file reads",
    "ioctl": "block device sizes (BLKGETSIZE64), FIONBIO, TCGETS on the log stream",
    "fcntl": "non-blocking fds, close-on-exec, image locks (OFD locks)",
    "flock": "image locks (the migration handoff)",
    "dup": "CPython (socket.dup)",
    "dup2": "CPython's os.dup2",
    "dup3": "CPython's os.dup2 (inheritable=False)",
    "pipe": "librados' wake-ups",
    "pipe2": "uvloop's and librados' wake-ups",
    "unlink": "removing our socket files at close",
    "unlinkat": "removing our socket files at close",
    "rename": "--record files",
    "mkdir": "the management socket's directory",
    "chmod": "socket-mode of a device socket",
    "fchmod": "socket-mode of a device socket",
    "fchmodat": "socket-mode of a device socket",
    "chown": "socket-owner and socket-group of a device socket",
    "fchown": "socket-owner and socket-group of a device socket",
    "fchownat": "socket-owner and socket-group of a device socket",
    "ftruncate": "memfd sizes (the inflight areas)",
    "memfd_create": "inflight areas (GET_INFLIGHT_FD)",
    "eventfd2": "the dataplane threads' control eventfds; engines' completion fds",
    "epoll_create": "uvloop's loop",
    "epoll_create1": "the event loop; each dataplane thread's epoll, created here",
    "timerfd_create": "the NBD engine's reconnect timer; the test-delay stage",
    "signalfd4": "uvloop's signal handling",
    "io_uring_setup": "an io_uring engine opened by add-device",
    "io_setup": "a Linux AIO engine opened by add-device",
    "umask": "the socket mode of add-device's socket (os.umask)",
    "uname": "CPython's platform checks; librados",
    "sysinfo": "librados' start-up",
    "getrlimit": "CPython's resource module; librados",
    "prlimit64": "glibc's getrlimit; librados",
    "getrusage": "the resource report of the metrics",
    "times": "prometheus_client's process collector",
    "sched_setaffinity": "pinning dataplane threads (cpus=)",
    "sched_getaffinity": "CPU counts (CPython, librados)",
    "sched_getparam": "librados' thread setup",
    "sched_getscheduler": "librados' thread setup",
    "getpriority": "librados' thread setup",
    "setpriority": "librados' thread setup",
    "prctl": "thread names (PR_SET_NAME), which a thread sets before its own filter",
    "seccomp": "a dataplane thread loads its own list (it may only narrow what it has)",
    "membarrier": "liburcu in librados",
    "rseq": "glibc on a new thread",
    "set_robust_list": "glibc on a new thread",
    "get_robust_list": "glibc's thread start",
    "set_tid_address": "glibc on a new thread",
    "clone": "new threads only (CLONE_THREAD: the filter rejects processes)",
    "rt_sigaction": "signal handlers (the event loop's SIGINT, SIGTERM)",
    "rt_sigpending": "CPython's signal handling",
    "rt_sigtimedwait": "CPython's signal handling",
    "tgkill": "CPython's pthread_kill; glibc's setxid broadcast (before the filter)",
    "getuid": "the management socket's peer check; log lines",
    "geteuid": "the management socket's peer check; image error messages",
    "getgid": "log lines after --user",
    "getegid": "CPython's os.getegid",
    "getgroups": "CPython's os.getgroups",
    "getppid": "CPython's os.getppid (the test hook's harmless call)",
    "getpgrp": "CPython's os.getpgrp",
    "getsid": "CPython's os.getsid",
    "getresuid": "glibc's secure-mode checks",
    "getresgid": "glibc's secure-mode checks",
    "capget": "librados' start-up",
    "mlock": "librados' buffers",
    "munlock": "librados' buffers",
    "msync": "the dirty log",
    "mincore": "librados' buffers",
    "select": "prometheus_client's HTTP server",
    "pselect6": "prometheus_client's HTTP server",
    "epoll_wait": "the event loop",
    "fadvise64": "CPython file reads",
}

ALLOW: dict[str, str] = {**_IOTHREAD, **_SOCKETS, **_FILES}
# The control thread opens the remote engines and may run their threads' calls too.
for _extra in _ENGINES.values():
    for _name, _why in _extra.items():
        ALLOW.setdefault(_name, _why)

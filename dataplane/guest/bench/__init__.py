"""``dataplane bench``: the standalone ring-replay benchmark.

It plays QEMU and the guest: a vhost-user frontend shares a memfd as guest
RAM, lays out the virtqueues, and a C driver (csrc/guest/dp_driver.c, one thread
per queue) drives virtio-blk requests through them, synthetic or replayed
from a trace, against any vhost-user-blk backend.  fio on the same image
gives the bare-metal figure.

Modules, bottom up: ``errors``, ``trace`` (the trace format's reader and
writer), ``hist`` (latency percentiles), ``procstat`` (backend CPU),
``layout`` (guest RAM), ``connection`` (vhost-user set-up), ``workload``
(what each queue does), ``guest_threads`` (the C loop on its threads),
``limit`` (the ideal device), ``targets``, ``remote``, ``results`` and
``fio`` (what is measured), ``runner`` (rounds), ``report`` (table, JSON,
plot) and ``cli``.
"""

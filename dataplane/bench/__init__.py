"""``dataplane bench``: the standalone ring-replay benchmark.

It plays QEMU and the guest: a vhost-user frontend shares a memfd as guest
RAM, lays out the virtqueues, and a C driver (csrc/dp_driver.c, one thread
per queue) drives virtio-blk requests through them, synthetic or replayed
from a trace, against any vhost-user-blk backend.  fio on the same image
gives the bare-metal figure.

Modules, bottom up: ``trace`` (the trace format, reader and writer),
``hist`` (latency percentiles), ``procstat`` (backend CPU), ``frontend``
(vhost-user set-up), ``workload`` (what each queue does), ``driver`` (the C
loop on its threads), ``targets`` and ``fio`` (what is measured), ``runner``
(rounds), ``report`` (table, JSON, plot) and ``cli``.
"""

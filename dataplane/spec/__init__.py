"""The spec floor: what both sides of the ring agree on, and nothing else.

The device wing (``dataplane.device``, ``dataplane.serve``) and the guest wing
(``dataplane.guest``, ``dataplane.guest.bench``, ``dataplane.guest.harness``) share only
these modules (and ``dataplane.vhost.messages``).  They import nothing of the
project; csrc/spec/dp_virtio.h is their C twin.

- ``ring``: split-ring layouts, flags, ring feature bits, ``vring_need_event``;
- ``blk``: virtio-blk request header, types, statuses, feature bits, config space;
- ``kinds``: the one table of request kinds (stats, trace letters, narration);
- ``trace``: the request trace format;
- ``choices``: the engine names and cache modes ``serve`` accepts.
"""

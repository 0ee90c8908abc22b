"""dataplane: a userspace virtio-blk dataplane served over vhost-user."""

__version__ = "0.1.0"

"""The guest wing: the driver side of the ring and a virtio-blk driver over vhost-user."""

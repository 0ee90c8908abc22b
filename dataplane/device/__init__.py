"""The device wing: guest memory, the virtqueue, virtio-blk, the engines, the datapaths and
their threads."""

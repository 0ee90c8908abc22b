"""The serving floor: vhost-user-blk connections applied to devices, the asyncio server,
management, metrics and configuration."""

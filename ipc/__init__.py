"""ringstack ipc: what reactor processes share.

- :mod:`ipc.shm`      segments/semaphores named ``/ringstack.<pid>.<what>``, the owning
                      :class:`Instance` (unlinks on every exit path), the dead-instance reaper
- :mod:`ipc.ring`     lock-free SPSC byte rings (x86-64 TSO), batched frames, :class:`Producer`
- :mod:`ipc.mesh`     the N x N rings + N doorbells of an instance in one segment
- :mod:`ipc.doorbell` sleep/wake for idle consumers
- :mod:`ipc.codec`    handlers registered by stable name, msgpack arguments
- :mod:`ipc.arena`    DMA-style shared buffer arenas with per-owner 8 KiB / 64 KiB pools
"""
from .arena import ALIGNMENT, LARGE_BUFFER, SMALL_BUFFER, Arena, BufferHandle, BufferPool, view
from .codec import (CodecError, Sender, decode, dispatch, dispatch_many, encode, encode_batch, encoder, handler,
                    handler_id, message, register_handler, unregister_handler)
from .doorbell import Doorbell
from .mesh import Mesh
from .ring import Producer, Ring, UnsupportedPlatform
from .shm import Instance, Segment, Semaphore, reap_dead_instances

__all__ = [
    "ALIGNMENT", "LARGE_BUFFER", "SMALL_BUFFER", "Arena", "BufferHandle", "BufferPool", "view",
    "CodecError", "Sender", "decode", "dispatch", "dispatch_many", "encode", "encode_batch", "encoder", "handler",
    "handler_id", "message", "register_handler", "unregister_handler",
    "Doorbell", "Mesh", "Producer", "Ring", "UnsupportedPlatform",
    "Instance", "Segment", "Semaphore", "reap_dead_instances",
]

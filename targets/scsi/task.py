"""One SCSI command as the transport hands it over (SPDK's struct spdk_scsi_task)."""
from __future__ import annotations

from . import sense as S

DIR_NONE, DIR_TO_DEV, DIR_FROM_DEV = 0, 1, 2

# task attributes (SAM-5), as iSCSI carries them
ATTR_UNTAGGED, ATTR_SIMPLE, ATTR_ORDERED, ATTR_HEAD_OF_QUEUE, ATTR_ACA = 0, 1, 2, 3, 4


class ScsiTask:
    """``status``/``sense``/``data_in`` are set before the execute callback runs;
    ``release()`` gives the task's buffers back once the transport sent ``data_in``
    (a buffer the bdev is still filling, after an abort, goes back when the I/O ends)."""

    __slots__ = ("lun", "cdb", "transfer_length", "direction", "tag", "attr", "data_out",
                 "status", "sense", "data_in", "aborted", "_nexus", "_cb", "_bufs",
                 "_inflight", "_released", "_finished", "lock_id", "_parked", "expected_length")

    def __init__(self, lun: int, cdb, transfer_length: int, direction: int = DIR_NONE,
                 tag: int = 0, attr: int = ATTR_SIMPLE):
        self.lun = lun
        self.cdb = bytes(cdb)
        self.transfer_length = transfer_length
        self.direction = direction
        self.tag = tag
        self.attr = attr
        self.data_out = None
        self.status = S.GOOD
        self.sense = b""
        self.data_in = b""
        self.aborted = False
        self._nexus = None
        self._cb = None
        self._bufs: list = []        # (handle, buf) pairs from handle.alloc
        self._inflight = 0           # bdev ops not yet returned
        self._released = False
        self._finished = False
        self.lock_id = 0             # the COMPARE AND WRITE range lock this task holds
        self._parked = None
        # bytes the command means to move (SPDTL), before truncation to transfer_length;
        # None: len(data_in).  The transport derives over/underflow residuals from it.
        self.expected_length = None

    def set_error(self, e: S.ScsiError) -> None:
        self.status = e.status
        self.sense = e.sense()
        self.data_in = b""

    def release(self) -> None:
        self._released = True
        self._free_if_idle()

    def _free_if_idle(self) -> None:
        if self._released and self._inflight == 0 and self._bufs:
            bufs, self._bufs = self._bufs, []
            self.data_in = b""
            for h, buf in bufs:
                self._nexus.give_back(h, buf)

    def __repr__(self):
        return (f"ScsiTask(lun={self.lun}, op={self.cdb[0]:#04x}, tag={self.tag}, "
                f"status={self.status:#x})")

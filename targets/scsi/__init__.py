"""The SCSI target over bdevs (SPC-4/SBC-3; SPDK lib/scsi): Contract 3 of docs/targets.md.

    dev = ScsiDev(name, [(lun_id, bdev_name), ...])     # one replica per reactor
    nexus = dev.open_nexus(initiator_port, target_port)
    task = ScsiTask(lun, cdb, transfer_length, direction, tag, attr)
    nexus.execute(task, cb)

See docs/scsi.md for the command set and who owns which state."""
from .dev import ScsiDev, find_dev  # noqa: F401
from .nexus import Nexus  # noqa: F401
from .sense import ScsiError, fixed_sense  # noqa: F401
from .task import (ATTR_ACA, ATTR_HEAD_OF_QUEUE, ATTR_ORDERED, ATTR_SIMPLE,  # noqa: F401
                   ATTR_UNTAGGED, DIR_FROM_DEV, DIR_NONE, DIR_TO_DEV, ScsiTask)
from . import sense  # noqa: F401

__all__ = ["ScsiDev", "Nexus", "ScsiTask", "ScsiError", "fixed_sense", "find_dev", "sense",
           "DIR_NONE", "DIR_TO_DEV", "DIR_FROM_DEV", "ATTR_UNTAGGED", "ATTR_SIMPLE",
           "ATTR_ORDERED", "ATTR_HEAD_OF_QUEUE", "ATTR_ACA"]

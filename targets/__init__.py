"""Targets: the programs that serve bdevs to clients over a network protocol (SPDK's
lib/nbd, lib/iscsi, lib/scsi).  They are *users* of the bdev layer (bdev.api only), apart
from drivers/, which are bdev modules.  Layering and contracts: docs/targets.md."""

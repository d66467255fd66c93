"""iSCSI target (RFC 7143, ERL 0) over targets/scsi: see docs/targets.md and docs/iscsi.md."""

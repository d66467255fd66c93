"""One way to serve connections (docs/targets.md, "targets/serve"): listeners on the main
reactor, fd passing round-robin to reactors, a per-reactor fd-driven poller holding the
connections, all-or-nothing control fanouts, and `BdevHandle` (a bdev opened on the
serving thread).  Protocol-agnostic: it knows nothing of NBD, SCSI or iSCSI."""

"""Everything a host talks to: SCSI emulation, the native iSCSI target and LIO/TCMU."""

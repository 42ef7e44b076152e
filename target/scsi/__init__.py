"""SCSI block-device emulation (SPC/SBC), sans-I/O: CDB in, data/status/sense out."""

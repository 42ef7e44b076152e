"""Native iSCSI target: PDUs, login/CHAP and sessions (sans-I/O), plus a thin asyncio server."""

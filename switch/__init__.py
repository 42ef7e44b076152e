"""Composition root: the daemon, admin API (unix socket), shell, CLI, configuration and logging."""

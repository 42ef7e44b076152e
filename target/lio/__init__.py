"""LIO configuration through rtslib-fb and the TCMU ring handler (uio mmap)."""

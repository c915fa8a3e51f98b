"""Integration tests: they drive real external programs (Xvnc, QEMU, vncviewer)."""

#!/usr/bin/env python3
"""Decompresses one XZ stream from stdin to stdout, ignoring any bytes after the stream
(the kernel's bzImage appends the uncompressed size to its XZ payload).

Used by the testbed's guest image builder (devices/testbed/src/image.rs) to turn Debian's
vmlinuz into vmlinux, and for .ko.xz modules.
"""
import lzma
import sys

data = sys.stdin.buffer.read()
dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
try:
    out = dec.decompress(data)
except lzma.LZMAError as e:
    sys.exit(f"unxz: {e}")
if not dec.eof:
    sys.exit("unxz: truncated XZ stream")
sys.stdout.buffer.write(out)

"""Images: the base image cache, downloads, format inspection and qemu-img.

``qemu_img`` is the only module that runs qemu-img; ``inspect`` vets a file before
qemu-img sees it; ``fetch`` downloads with size and hash checks; ``cache`` ties them
together under per-base file locks.
"""

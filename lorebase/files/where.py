"""Which bytes a node serves: the file server at FILES_URL (remote.py), or this box's disk
(blobs.py). Apart from both, so that neither imports the other."""

from __future__ import annotations

from typing import Any

from .blobs import Blobs, LocalBlobs
from .remote import RemoteBlobs


def blobs(config: Any) -> Blobs:
    """The node's blobs: the file server at FILES_URL, or this box's disk."""
    return RemoteBlobs(config) if config.FILES_URL else LocalBlobs(config)

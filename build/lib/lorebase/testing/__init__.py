"""Testing a lorebase application, as lorebase tests itself: real processes over real HTTP.

As a pytest plugin, named in the project's top conftest.py::

    pytest_plugins = ["lorebase.testing"]

it gives the fixtures `lore` (the project's lorebase on a free port, its own Redis), `mail`
(the captured mail), `client` (a browser with signup / verify / login helpers), `s3` and
`lore_s3` (moto's S3 and a lorebase mirroring to it) and `lorebase_settings` (see
`lorebase.testing.plugin`). The classes work without pytest too.

It needs the test extras (`pip install lorebase[test]`: httpx, aiosmtpd, moto); lorebase
itself never imports this package.
"""

from .client import PASSWORD, Client, fresh_ip
from .mail import MailSink
from .plugin import client, lore, lore_s3, lorebase_settings, mail, s3
from .s3 import S3_BUCKET, S3_TRASH, Moto
from .servers import (
    FILES_SECRET,
    FileServer,
    Lorebase,
    RedisServer,
    ServerProcess,
    free_cluster_port,
    free_port,
    wait_for,
)

__all__ = [
    "FILES_SECRET",
    "PASSWORD",
    "S3_BUCKET",
    "S3_TRASH",
    "Client",
    "FileServer",
    "Lorebase",
    "MailSink",
    "Moto",
    "RedisServer",
    "ServerProcess",
    "client",
    "free_cluster_port",
    "free_port",
    "fresh_ip",
    "lore",
    "lore_s3",
    "lorebase_settings",
    "mail",
    "s3",
    "wait_for",
]

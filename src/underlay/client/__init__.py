"""The Python SDK: ``Client(url, token)`` over HTTP, typed, raising the server's error classes.

Inside a job started by the platform, ``Client.from_env()`` needs no arguments: it reads
``UNDERLAY_URL`` and ``UNDERLAY_TOKEN``.
"""

from underlay.client.client import Client

__all__ = ["Client"]

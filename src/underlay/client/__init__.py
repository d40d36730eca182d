"""The Python SDK: ``Client(url, token)`` over HTTP, typed, raising the server's error classes.

``Client.from_env()`` is configured as the CLI is (see :mod:`underlay.client.profiles`):
arguments, else ``UNDERLAY_URL``/``UNDERLAY_TOKEN``, else the profile ``underlay login`` saved.
Inside a job started by the platform it needs no arguments: the environment holds both.
"""

from underlay.client.client import Client

__all__ = ["Client"]

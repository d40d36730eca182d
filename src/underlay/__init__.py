"""underlay: a self-hosted AI infrastructure platform.

The package is layered (see docs/architecture.md): the kernel (config, errors, store, blobs,
crypto, identity, audit, lineage), the domains (compute, data, ml, serving, monitoring, trust)
and the faces (api, cli, client). Imports only go down.

``underlay.load_model("P", "NAME@ALIAS")`` loads a verified registered model (see
:mod:`underlay.client.models`); ``underlay.read_ray("P", "TABLE")`` and ``underlay.write_ray("P",
"TABLE", dataset)`` read and write a table as a Ray Dataset (:mod:`underlay.client.ray_data`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from underlay.client.models import load_model as load_model
    from underlay.client.ray_data import read_ray as read_ray
    from underlay.client.ray_data import write_ray as write_ray
    from underlay.client.tracking import start_run as start_run


def __getattr__(name: str) -> Any:
    """The SDK's top-level helpers (``underlay.start_run``, ``underlay.load_model``), imported
    on first use so ``import underlay`` stays light."""
    if name == "start_run":
        from underlay.client.tracking import start_run

        return start_run
    if name == "load_model":
        from underlay.client.models import load_model

        return load_model
    if name in ("read_ray", "write_ray"):
        from underlay.client import ray_data

        return getattr(ray_data, name)
    raise AttributeError(f"module 'underlay' has no attribute {name!r}")


__all__ = ["__version__", "load_model", "read_ray", "start_run", "write_ray"]

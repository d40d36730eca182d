"""underlay: a self-hosted AI infrastructure platform.

The package is layered (see docs/architecture.md): the kernel (config, errors, store, blobs,
crypto, identity, audit, lineage), the domains (compute, data, ml, serving, monitoring, trust)
and the faces (api, cli, client). Imports only go down.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``underlay.start_run``, imported on first use so ``import underlay`` stays light."""
    if name == "start_run":
        from underlay.client.tracking import start_run

        return start_run
    raise AttributeError(f"module 'underlay' has no attribute {name!r}")


__all__ = ["__version__", "start_run"]

"""underlay: a self-hosted AI infrastructure platform.

The package is layered (see docs/architecture.md): the kernel (config, errors, store, blobs,
crypto, identity, audit, lineage), the domains (compute, data, ml, serving, monitoring, trust)
and the faces (api, cli, client). Imports only go down.
"""

__version__ = "0.1.0"

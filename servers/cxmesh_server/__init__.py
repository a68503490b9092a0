"""cxmesh servers: the shared runtime and one package per service."""

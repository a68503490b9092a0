"""Diagnostics: the echo RPC that baselines the mesh (cxmesh.diagnostics.v1)."""

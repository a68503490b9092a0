"""Compliance: rule sets and pre-dial decisions (cxmesh.compliance.v1)."""

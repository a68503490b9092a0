"""IAM: tenants and API keys (cxmesh.iam.v1)."""

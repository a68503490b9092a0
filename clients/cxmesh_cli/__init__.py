"""The cxmesh command line."""

"""The runtime every cxmesh service stands on: settings, server bootstrap, auth, errors,
metrics, tracing, logging, storage. One copy, used by all."""

"""The edge: Envoy configuration generated from the service list and the descriptor set."""

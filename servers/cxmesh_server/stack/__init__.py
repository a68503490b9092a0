"""The local stack: embedded Postgres and Redis, every service, and Envoy, as processes.
`make run` and the test fixtures both start the mesh through this package."""

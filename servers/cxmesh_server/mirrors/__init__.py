"""Redis mirrors of Postgres data that one service writes and others read on hot paths.
Their layout lives here, once, for both sides."""

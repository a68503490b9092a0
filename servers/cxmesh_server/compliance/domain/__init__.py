"""Compliance rules without I/O: compiled rule sets and the decision they give."""

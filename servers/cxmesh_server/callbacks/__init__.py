"""Callbacks: the Genesys Engagement Service equivalent."""

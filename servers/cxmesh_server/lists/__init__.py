"""Lists: contact lists, imports, specifications, suppression lists (cxmesh.lists.v1)."""

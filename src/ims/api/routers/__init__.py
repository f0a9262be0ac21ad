"""One module per resource; each builds a router for a given API version."""

"""Client side of IMS: the HTTP API client and the ims-python-helper style helpers built on it."""

"""Image Management Service: a Python reimplementation of the Cray-HPE IMS."""

__version__ = "0.1.0"

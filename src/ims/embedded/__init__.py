"""Servers IMS starts itself for its embedded default: a SeaweedFS S3 gateway on 127.0.0.1."""

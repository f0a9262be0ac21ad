"""Records and rules of IMS, free of I/O."""

"""lockfs: a FUSE lock directory whose entries vanish once nobody holds them."""

__version__ = "0.1.0"

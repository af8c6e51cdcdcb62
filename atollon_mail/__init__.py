"""atollon-mail: an all-in-one mail appliance on Twisted."""

__version__ = "0.1.0"

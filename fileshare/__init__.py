"""fileshare: a streaming upload proxy with an antivirus pipeline."""

__version__ = "0.1.0"

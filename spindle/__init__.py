"""Spindle: a platform for launching a social app that may go viral overnight."""

from spindle.kv.client import AsyncClient, Client, connect

__all__ = ["AsyncClient", "Client", "connect"]
__version__ = "0.1.0"

"""The engine's version: the collection's (galaxy.yml), said by the agent's API, its
libtorrent user agent and the manifests it makes."""

VERSION = "0.2.0"

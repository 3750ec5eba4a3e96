"""Root pytest configuration, loaded for every test path (tests/, notebooks/, solutions/).

Every kernel nbval starts inherits this environment: deploykit then refuses any non-loopback
network connection, so a notebook that tried to download something fails the suite
(see deploykit/_offline.py).
"""
import os

os.environ["DEPLOYKIT_BLOCK_NETWORK"] = "1"

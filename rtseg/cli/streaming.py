"""(commands to be added)"""
from rtseg.cli.app import app  # noqa: F401

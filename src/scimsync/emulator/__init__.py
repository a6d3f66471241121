"""A local server that behaves as Atlassian Cloud's SCIM API documents.

`scimsync emulate atlassian` runs it; tests and `make demo` use `RunningEmulator`.
"""

from scimsync.emulator.app import DIRECTORY_ID, PREFIX, create_app
from scimsync.emulator.running import RunningEmulator, serve

__all__ = ["DIRECTORY_ID", "PREFIX", "RunningEmulator", "create_app", "serve"]

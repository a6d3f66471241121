"""A local server that behaves as Atlassian Cloud's SCIM API documents.

`scimsync emulate atlassian` runs it; tests and `make demo` use `RunningEmulator`.
The SCIM base URL (`target.url`) is `http://HOST:PORT/scim/directory/emulated`.

Choices where Atlassian's behaviour is unconfirmed (atlassian-scim-api.md):
- userName may change, if the new name is free (409 otherwise).
- userName, email and group-name uniqueness, and the userName/displayName filters,
  ignore case; externalId is case-exact.
- Group renames are processed by default (`rename="allowed"`); `"immutable"` answers
  400 `mutability`, as the API reference's wording suggests.
- Both member-removal forms work; removing a non-member is a no-op.
- PUT without `active` sets it back to true; unknown attributes are dropped.
- With a data file, every write appends one line (a JSON Lines journal after a snapshot),
  folded into a new snapshot (temporary file + rename) on start, on stop and when it
  outgrows the snapshot.
- /_emulator/{stats,reset,wipe,state,config} need the same bearer token and are
  never rate-limited, delayed or faulted.
"""

from scimsync.emulator.app import DIRECTORY_ID, PREFIX, create_app
from scimsync.emulator.running import RunningEmulator, serve

__all__ = ["DIRECTORY_ID", "PREFIX", "RunningEmulator", "create_app", "serve"]

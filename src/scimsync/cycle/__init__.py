"""One cycle: read, map, plan, guard, apply, record.

A cycle is a full reconciliation (everything in scope, and the target's copies of what
scimsync manages) or incremental (only what changed in the directory since the stored
watermark). Both hand the planner a *view*: the desired records and the links of one
universe of objects, complete within itself, so the same rules apply to both.

- `mode`: full or incremental, and the store's rows that decide it
- `desired`: directory records mapped to what the target should hold
- `views`: the universe of one cycle: full, incremental or one user
- `observe`: what the target holds of a view: the planner's input
- `prepare`: plan and guard, everything before the first write (`plan` stops here)
- `run`: one cycle applied and recorded as a run (`sync`, and each cycle of `run`)
- `held`: operations the safety threshold holds, and their approval
- `failures`: refusals on record once, failure rows that settled cleared
- `recovery`: after a cycle killed mid-write, the creates that landed are linked
- `check`: the `check` command's questions to the directory and the target
"""

"""`python -m scimsync`: the same as the `scimsync` command."""

from scimsync.cli import main

main()

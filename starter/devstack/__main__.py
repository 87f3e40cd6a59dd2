"""`python -m starter.devstack` (what `make run` runs)."""

from starter.devstack.stack import main

main()

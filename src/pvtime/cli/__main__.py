"""`python -m pvtime.cli`: the `pvtime` command."""

from pvtime.cli import main

main(prog_name="pvtime")

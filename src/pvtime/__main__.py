"""`python -m pvtime`: the `pvtime` command."""

from pvtime.cli import main

main(prog_name="pvtime")

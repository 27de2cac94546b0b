"""``python -m costwatch.cli``: the `costwatch` command."""

from costwatch.cli import main

main()

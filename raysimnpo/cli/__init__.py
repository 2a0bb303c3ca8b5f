"""L3: the command lines, one module per command (`python -m raysimnpo.{sweep,run,report,relearn}` or
`python -m raysimnpo <command>`): parse, validate, call, print; exit 2 on a user's mistake."""

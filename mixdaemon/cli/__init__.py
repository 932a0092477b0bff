"""The command line: the one layer that parses arguments, prints and draws progress bars. Nothing
imports it."""

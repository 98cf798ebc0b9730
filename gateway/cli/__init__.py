"""The `turnout` command: `main` builds the parser from each family's subcommands (adapters,
rollouts, training, captures, bench, the flywheel demo) and runs one. Entry points may import
anything, and import the model stack (torch) only inside the commands that need it.
"""

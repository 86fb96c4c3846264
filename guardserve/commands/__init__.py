"""The subcommands of `guardserve`: each builds its flags and runs its package's code."""

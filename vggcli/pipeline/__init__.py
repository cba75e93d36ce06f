"""Pipelines: a pure plan (`plan.py`: the TOML file, each step's state, the dependency graph)
and the runners that carry it out (`local.py`: this machine, up to N steps at once;
`slurm.py`: every step a Slurm job)."""

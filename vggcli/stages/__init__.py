"""One stage per command: a frozen config in, one run version out.

A stage resolves the runs its config names (as typed artifacts), opens exactly one
`RunWriter`, hands the core (training loop, evaluation, fusion arithmetic, report tables,
benchmarks) plain inputs and callbacks, names every output of its run, and returns the
`RunVersion`. It is the one place that decides who writes a run.
"""

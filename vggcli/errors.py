"""The one exception type for "the user asked for something impossible".

The CLI catches it once and prints its message as a single red line; nothing below
`commands/` prints errors itself.
"""


class VggError(Exception):
    """A failure the user can act on; its message is the whole story, in one line.

    `exit_code` is 2 for usage mistakes (bad option, missing input) and 1 for failures
    while doing the work (corrupt data, full disk). `field` names the config field at fault
    (`micro_batch`); the CLI turns it into the option (`--micro-batch`), so the core never
    names a flag.
    """

    def __init__(self, message: str, exit_code: int = 2, field: str | None = None) -> None:
        super().__init__(message)
        self.exit_code, self.field = exit_code, field


PREEMPTED = 75  # EX_TEMPFAIL: SIGTERM stopped the work after a checkpoint; run again to resume


class WorkFailed(VggError):
    """The input was acceptable but the work could not be finished (exit code 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=1)

"""A warm launcher for pipeline steps: one fresh interpreter imports torch, FFCV and our
stages once, then forks a child per step.

A fresh `python -m vggcli` spends about 5 s importing before it does anything (most of it
FFCV compiling a numba typed dict at import), which a 30-step pipeline pays 30 times. A
forked child starts with everything imported and is otherwise a fresh command: its own
process, environment, signals and exit code. The zygote itself never computes, so forking
it is safe (a process whose OpenMP pool has run must not fork); the pipeline process, which
may have (the tests run it inside pytest), only talks to it through pipes.

Protocol: one JSON line per step on stdin, {"argv": [...], "env": {...}}; one line back on
the result pipe (fd given as argv[1]) with the child's exit code. `warm_launcher` is the
pipeline's side of it, `serve` the zygote's.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from vggcli.errors import WorkFailed
from vggcli.processes import die_with_parent

ENTRY = str(Path(__file__).with_name("__main__.py"))  # sys.argv[0] under `python -m vggcli`
PRELOAD = ("vggcli.cli", "vggcli.stages.train", "vggcli.stages.evaluate",
           "vggcli.stages.preprocess", "vggcli.stages.fuse")  # fmt: skip


def _child(argv: list[str], env: dict[str, str]) -> None:
    """Run `vgg argv` in this forked process: exactly `python -m vggcli ARGS`, whose entry
    point (cli.main) ends the process with the command's exit code. Only a failure before
    the command starts gets here, and ends the process with 1."""
    try:
        die_with_parent()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops the step
        os.environ.clear()
        os.environ.update(env)
        # manifests record sys.argv as the command; by module name, so that the launcher
        # does not import the CLI that starts pipelines
        sys.argv = [ENTRY, *argv]
        runpy.run_module("vggcli", run_name="__main__", alter_sys=True)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


def serve(result_fd: int) -> None:
    """Import once, then fork a child per request until stdin closes."""
    import importlib

    for module in PRELOAD:
        importlib.import_module(module)
    with os.fdopen(result_fd, "w", buffering=1) as results:
        for line in sys.stdin:
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                sys.stdin.close()
                _child(request["argv"], request["env"])
            _, status = os.waitpid(pid, 0)
            results.write(f"{os.waitstatus_to_exitcode(status)}\n")


Launch = Callable[[list[str], dict[str, str]], int]


@contextlib.contextmanager
def warm_launcher(cores: tuple[int, ...] | None = None) -> Iterator[Launch]:
    """A zygote process (fresh, so safe to fork) that imported the heavy modules once; the
    yielded function runs `vgg ARGS` with ENV in a child of it and returns the exit code.
    With `cores`, the zygote and so every step it starts may use only those cores. The
    zygote sets both that and its death with the parent itself (no preexec_fn: the local
    runner starts launchers while other threads run)."""
    results_fd, write_fd = os.pipe()
    pinned = ",".join(map(str, cores)) if cores is not None else ""
    zygote = subprocess.Popen(
        [sys.executable, "-m", "vggcli.zygote", str(write_fd), pinned],
        stdin=subprocess.PIPE,
        text=True,
        pass_fds=(write_fd,),
    )
    os.close(write_fd)
    assert zygote.stdin is not None
    with os.fdopen(results_fd) as results:

        def launch(argv: list[str], env: dict[str, str]) -> int:
            zygote.stdin.write(json.dumps({"argv": argv, "env": env}) + "\n")  # type: ignore[union-attr]
            zygote.stdin.flush()  # type: ignore[union-attr]
            line = results.readline()
            if not line:
                raise WorkFailed(f"the step launcher stopped (exit {zygote.wait()})")
            return int(line)

        try:
            yield launch
        finally:
            with contextlib.suppress(OSError):
                zygote.stdin.close()
            zygote.wait()


if __name__ == "__main__":
    die_with_parent()
    if len(sys.argv) > 2 and sys.argv[2]:
        os.sched_setaffinity(0, {int(c) for c in sys.argv[2].split(",")})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the step's and the pipeline's
    serve(int(sys.argv[1]))
    # no interpreter teardown, as for every vgg process (cli.main): numba's TBB layer can hang
    # in it on one core (a --jobs slot), and the pipeline waits for this process to end
    os._exit(0)

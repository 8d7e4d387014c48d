"""Stop cleanly before a cluster time limit, and checkpoint on a clock.

SIGUSR1, SIGTERM (the job's warning before its time limit, `scancel --signal`, a preemption) or
SIGINT (Ctrl-C) does not kill `udit train` / `udit sample`: the handler only raises a flag (a
second Ctrl-C interrupts at once). The command
finishes the step (or shard) in flight, writes a checkpoint of exactly that step, and exits
with EXIT_STOPPED, so Snakemake (--retries) submits the job again and the retry resumes from
that checkpoint. Under DDP every rank must stop at the same step: `StopFlag.poll` all-reduces
the flags, so one rank's signal stops them all after the same step. That all-reduce (and its
host read, which waits for the GPU queue) happens every `poll_every` steps, the same steps on
every rank, not every step.
"""

import os
import signal
import sys
import threading
import time

import torch

from udit import distributed
from udit.errors import UserError

DONE_FILE_ENV = "UDIT_DONE_FILE"  # set by workflow/scripts/launch.sh
EXIT_STOPPED = 75  # sysexits.h EX_TEMPFAIL: "temporary failure; the user is invited to retry"
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
POLL_EVERY = 10  # steps between the ranks' stop agreements under DDP (seconds of work at most)


class StoppedEarly(UserError):
    """Stopped on request after checkpointing; running the same command again resumes."""

    exit_code = EXIT_STOPPED


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader worker_init_fn: a signal sent to the whole job reaches the workers too; they
    must outlive it, since the main process still finishes its step with their batches."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopFlag:
    """Within `with StopFlag() as flag:`, SIGUSR1 / SIGTERM set `flag.signal` instead of killing
    the process; the previous handlers come back on exit. `checkpoint_minutes` > 0 also makes
    `poll` report a time-based checkpoint due that many minutes after the last `reset_clock`."""

    def __init__(self, *, checkpoint_minutes: float = 0.0, poll_every: int = POLL_EVERY):
        self.signal: int | None = None  # the first stop signal received
        self.period_s = checkpoint_minutes * 60.0
        self.poll_every = poll_every
        self.last = time.monotonic()
        self._previous = {}

    def __enter__(self) -> "StopFlag":  # noqa: PYI034 (typing.Self is 3.11+, we support 3.10)
        if threading.current_thread() is threading.main_thread():  # signal() is main-only
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, _frame) -> None:
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        if self.signal is None:
            self.signal = signum
            name = signal.Signals(signum).name
            print(f"{name} received: stopping after the step in flight", file=sys.stderr)

    def reset_clock(self) -> None:
        self.last = time.monotonic()

    def poll(self, info: distributed.DistInfo, step: int = 0) -> tuple[bool, bool]:
        """-> (stop, checkpoint due) after `step` (1-based), the same on every rank (the max over
        ranks). Under DDP the ranks agree only at steps divisible by `poll_every`; in between
        this returns (False, False) without any communication."""
        due = self.period_s > 0 and time.monotonic() - self.last >= self.period_s
        flags = (self.signal is not None, due)
        if not info.enabled:
            return flags
        if step % self.poll_every:
            return False, False
        # one tiny all-reduce per poll: every rank must leave the loop after the same step
        t = torch.tensor([float(f) for f in flags], device=info.device)
        return tuple(bool(v) for v in distributed.all_reduce_max(t, info).tolist())

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else "another rank's stop signal"


def mark_done() -> None:
    """Tell the launcher (workflow/scripts/launch.sh) that this job's work is complete, so a stop
    signal that reaches the processes while they exit does not fail the finished job; then
    ignore further stop signals (the default action would kill the exiting process)."""
    path = os.environ.get(DONE_FILE_ENV)
    if not path:  # not under the launcher (a shell, a test calling main()): nothing to tell
        return
    if int(os.environ.get("RANK", "0")) == 0:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

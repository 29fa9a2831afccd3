"""The check that a trial's worker process is still alive: right for live, dead and reused pids, and it sends no
signal (on Windows, os.kill(pid, 0) is a console Ctrl-C, CTRL_C_EVENT)."""
import os
import socket
import subprocess
import sys

import pytest

from task_vector_opt.search import study as study_module
from task_vector_opt.search.study import _is_dead_here, _start_time


def _worker(pid: int, started: str | None = None) -> str:
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) if started is None else started}"


@pytest.fixture
def live_pid():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: the pid names no process
    return child.pid


@pytest.fixture
def no_signal_from_the_study_module(monkeypatch):
    """os.kill as Windows would have it for the study module: any call from there fails the test. Calls from
    elsewhere (psutil uses signal 0 on POSIX, where it is harmless) go through."""
    real_kill = os.kill

    def kill(pid, sig):
        if sys._getframe(1).f_globals.get("__name__") == study_module.__name__:
            raise AssertionError(f"the liveness check sent signal {sig} to pid {pid}")
        return real_kill(pid, sig)

    monkeypatch.setattr(os, "kill", kill)


def test_a_live_worker_is_alive_and_is_sent_no_signal(live_pid, no_signal_from_the_study_module):
    assert not _is_dead_here(_worker(live_pid))
    assert not _is_dead_here(_worker(live_pid, "?"))  # no start time known (not Linux): the pid decides


def test_a_dead_worker_is_dead_and_is_sent_no_signal(dead_pid, no_signal_from_the_study_module):
    assert _is_dead_here(_worker(dead_pid, "12345"))
    assert _is_dead_here(_worker(dead_pid, "?"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="start times come from /proc")
def test_a_reused_pid_counts_as_dead(live_pid, no_signal_from_the_study_module):
    started = _start_time(live_pid)
    assert started != "?"
    assert _is_dead_here(_worker(live_pid, str(int(started) + 1)))  # same pid, another process


def test_workers_of_other_hosts_and_this_process_are_left_alone(dead_pid):
    assert not _is_dead_here(f"another-host-{socket.gethostname()}:{dead_pid}:1")
    assert not _is_dead_here(_worker(os.getpid()))
    assert not _is_dead_here("")

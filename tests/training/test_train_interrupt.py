"""Signals and concurrent starts, with real processes: a checkpoint on SIGTERM/SIGINT, exit 143/130 and one
line; the same command resumes; a second start on a locked run directory is refused naming the holder; a
killed holder leaves no stale lock."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import lamamba
from lamamba import cli
from lamamba.pretrained import list_checkpoints

TINY_ARGS = ["--model-arg", "embed_dim=8", "--model-arg", "cond_dim=16", "--global-batch-size", "8",
             "--sample-num", "0", "--no-tensorboard", "--log-every", "1"]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and flock")


def _start(*args, cwd, **popen):
    src = os.path.dirname(os.path.dirname(lamamba.__file__))  # this checkout, whatever the working directory
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    return subprocess.Popen([sys.executable, "-m", "lamamba.train", *TINY_ARGS, "--device", "cpu", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, **popen)


def _wait_for(condition, proc, timeout=120):
    end = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.time() > end:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _steps(run_dir):
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _last_line(text):
    return [line for line in text.splitlines() if line.strip()][-1]


def test_sigterm_then_sigint_saves_the_step_and_the_same_command_resumes(tmp_path, capsys):
    results = tmp_path / "results"
    args = ["--results-dir", results, "--max-steps", 40, "--ckpt-every", 1000]
    proc = _start(*args, cwd=tmp_path)
    run_dir = lambda: next(iter(results.glob("000-*")), results / "none")  # noqa: E731
    _wait_for(lambda: len(_steps(run_dir())) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)  # sent together, the kernel would deliver the lower-numbered SIGINT first
    proc.send_signal(signal.SIGINT)  # a second signal changes nothing: the checkpoint is on its way
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_SIGTERM, err[-2000:]
    assert "Traceback" not in err
    last = _last_line(err)
    assert last.startswith("lamamba train: interrupted by SIGTERM at step "), last
    step = int(last.split("at step ")[1].split(":")[0])
    assert [s for s, _ in list_checkpoints(run_dir() / "checkpoints")] == [step]
    assert max(_steps(run_dir())) == step  # the step in progress was finished, logged and saved

    # the same command again resumes that run (no new numbered folder), and logs each step once
    assert cli.main(["train", *TINY_ARGS, "--device", "cpu", *map(str, args)]) == 0
    assert [p.name for p in results.iterdir()] == [run_dir().name]
    assert f"resumed from {run_dir() / 'checkpoints' / f'{step:07d}'}" in (run_dir() / "log.txt").read_text()
    assert _steps(run_dir()) == list(range(1, 41))


def test_sigterm_to_the_whole_job_with_data_workers_still_saves(tmp_path):
    """Schedulers and `timeout` signal every process of the job, DataLoader workers included: the workers leave
    the signal to the main process, which saves the step and exits 143 (a killed worker used to make it fail)."""
    run = tmp_path / "run"
    proc = _start("--run-dir", run, "--max-steps", 100_000, "--ckpt-every", 100_000, "--num-workers", 2,
                  cwd=tmp_path, start_new_session=True)
    _wait_for(lambda: len(_steps(run)) >= 3, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_SIGTERM, err[-2000:]
    assert _last_line(err).startswith("lamamba train: interrupted by SIGTERM at step "), err[-2000:]
    step = int(_last_line(err).split("at step ")[1].split(":")[0])
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [step]


def test_second_start_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--run-dir", run, "--max-steps", 100_000, "--ckpt-every", 100_000]
    holder = _start(*args, cwd=tmp_path)
    _wait_for(lambda: len(_steps(run)) >= 1, holder)
    try:
        rc = cli.main(["train", *TINY_ARGS, "--device", "cpu", *map(str, args)])
        err = capsys.readouterr().err
        assert rc == cli.EXIT_USAGE and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert f"is in use by process {holder.pid} on " in err and "--run-dir" in err
    finally:
        holder.send_signal(signal.SIGINT)
        _, herr = holder.communicate(timeout=120)
    assert holder.returncode == cli.EXIT_SIGINT, herr[-2000:]
    assert _last_line(herr).startswith("lamamba train: interrupted by SIGINT at step ")
    saved = list_checkpoints(run / "checkpoints")[-1][0]

    # a holder killed without any cleanup (here a bare process holding the same flock) leaves no stale lock
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'process %d ' % os.getpid()); time.sleep(600)")
    killed = subprocess.Popen([sys.executable, "-c", code, str(run / ".lock")])
    _wait_for(lambda: f"process {killed.pid} " in (run / ".lock").read_text(), killed)
    killed.kill()
    killed.wait(timeout=60)
    assert cli.main(["train", *TINY_ARGS, "--device", "cpu", "--run-dir", str(run), "--max-steps",
                     str(saved + 1)]) == 0
    assert list_checkpoints(run / "checkpoints")[-1][0] == saved + 1

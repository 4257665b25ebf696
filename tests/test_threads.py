"""ntkit's intra-op thread choice: one thread for small work, the user's count for large work, restored after."""

import pytest
import torch

import ntkit as nk
from ntkit import _threads, cli


def _recording_activation(seen):
    """A quadrature activation whose σ records the intra-op thread count it runs under (inside arch.kernel)."""
    def fn(u):
        seen.append(torch.get_num_threads())
        return torch.tanh(u)
    return nk.Activation(fn, derivative=lambda u: 1 - torch.tanh(u) ** 2, name="recording")


@pytest.fixture
def two_threads(monkeypatch):
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setattr(_threads.ThreadTuner, "_recent", {})  # no comparison from other tests' loops
    monkeypatch.setattr(_threads.ThreadTuner, "_healthy", {})
    yield
    torch.set_num_threads(previous)


def test_threads_for_work_size_and_device(two_threads):
    assert _threads.threads_for(_threads.SMALL_WORK - 1) == 1
    assert _threads.threads_for(_threads.SMALL_WORK) == 2
    assert _threads.threads_for(1, "cuda") == 2  # GPU work: the host's count is left alone
    torch.set_num_threads(1)
    assert _threads.threads_for(1e12) == 1  # never more than the user's setting


def test_small_kernels_run_on_one_thread_and_the_setting_is_restored(two_threads, monkeypatch):
    seen = []
    arch = nk.Serial(nk.Dense(8, b_std=0.1), _recording_activation(seen), nk.Dense(1))
    x = torch.randn(20, 3)
    arch.kernel(x)
    assert seen and set(seen) == {1} and torch.get_num_threads() == 2
    monkeypatch.setattr(_threads, "SMALL_WORK", 0)  # every call counts as large: the user's 2 threads
    seen.clear()
    arch.kernel(x)
    assert set(seen) == {2} and torch.get_num_threads() == 2


def test_the_setting_is_restored_after_a_tuned_call_that_chose_one_thread(two_threads, monkeypatch):
    """Large work keeps the user's count, and the tile loop's ThreadTuner may then switch to one thread; the call
    still ends on the user's count (it did not: every later kernel of the process ran on one thread)."""
    monkeypatch.setattr(_threads.ThreadTuner, "best", property(lambda self: 1))
    monkeypatch.setattr(_threads, "SMALL_WORK", 0)
    seen = []
    arch = nk.Serial(nk.Dense(8, b_std=0.1), _recording_activation(seen), nk.Dense(1))
    arch.kernel(torch.randn(40, 3), batch_size=8)  # 15 tiles: the tuner is active
    assert 1 in seen and 2 in seen and torch.get_num_threads() == 2
    seen.clear()
    nk.mlp(2, 1).kernel(torch.randn(64, 3), batch_size=8)
    nk.cnn(1, readout="gap").kernel(torch.randn(12, 1, 4, 4), batch_size=2)  # the spatial engine's tuner too
    assert torch.get_num_threads() == 2


def test_compiled_tiles_keep_the_users_count(two_threads, monkeypatch):
    """torch.compile specialises its code to the thread count, so a tuner switching compiled tiles to one thread
    compiled them again (seconds each): compiled tiles stay on the user's count, even when one thread is faster."""
    from ntkit.kernels import evaluate

    monkeypatch.setattr(_threads.ThreadTuner, "best", property(lambda self: 1))
    monkeypatch.setattr(_threads, "SMALL_WORK", 0)
    seen = []

    def recording_compile(fn, **kw):
        def step(*args):
            seen.append(torch.get_num_threads())
            return fn(*args)
        return step

    monkeypatch.setattr(evaluate.torch, "compile", recording_compile)
    nk.mlp(2, 8, b_std=0.1).kernel(torch.randn(80, 3), fused=True, batch_size=8)  # 55 tiles
    assert len(seen) == 55 and set(seen) == {2} and torch.get_num_threads() == 2
    tuner = _threads.ThreadTuner("cpu", tiles=100)
    tuner.start()
    torch.set_num_threads(1)  # as the tuner would
    tuner.freeze()
    assert not tuner.active and torch.get_num_threads() == 2


def test_the_setting_is_restored_when_the_call_fails(two_threads):
    def broken(u):
        raise RuntimeError("σ failed")
    arch = nk.Serial(nk.Dense(8), nk.Activation(broken, derivative=broken), nk.Dense(1))
    with pytest.raises(RuntimeError, match="σ failed"):
        arch.kernel(torch.randn(5, 3))
    assert torch.get_num_threads() == 2


def test_training_a_small_model_runs_on_one_thread(two_threads):
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, u):
            seen.append(torch.get_num_threads())
            return u

    net = torch.nn.Sequential(torch.nn.Linear(3, 8), Recorder(), torch.nn.Linear(8, 1))
    nk.train(net, torch.randn(16, 3), torch.randn(16, 1), steps=3, learning_rate=0.1, progress=False)
    assert len(seen) == 5 and set(seen[1:]) == {1}  # the first call is train's output-shape probe
    assert torch.get_num_threads() == 2


def test_cli_threads_option_applies_for_the_run_only(two_threads, capsys, monkeypatch):
    seen = []
    real_demo = cli._demo
    monkeypatch.setattr(cli, "_demo", lambda args: seen.append(torch.get_num_threads()) or real_demo(args))
    assert cli.main(["--threads", "1", "demo", "--points", "3"]) == 0
    assert seen == [1] and torch.get_num_threads() == 2
    with pytest.raises(SystemExit):
        cli.main(["--threads", "0", "demo"])
    assert "threads must be a positive integer" in capsys.readouterr().err


def test_thread_tuner_keeps_the_faster_count_and_rechecks(two_threads, monkeypatch):
    """Tiles that take 10x longer on 2 threads (busy cores): after timing two tiles of each, the tuner runs on one
    thread, times 2 threads again every RECHECK tiles, and switches back when they become faster. One thread must
    win by MARGIN to replace the user's count (idle cores: a noisy near-tie keeps the user's setting)."""
    clock = [0.0]
    monkeypatch.setattr(_threads.time, "perf_counter", lambda: clock[0])
    tuner = _threads.ThreadTuner("cpu", tiles=1000)
    used = []
    cost = {2: 10.0, 1: 1.0}
    for tile in range(200):
        tuner.start()
        used.append(torch.get_num_threads())
        clock[0] += cost[torch.get_num_threads()] if tile < 130 else {2: 0.4, 1: 1.0}[torch.get_num_threads()]
        tuner.stop(entries=1)
    assert used[:5] == [2, 2, 2, 1, 1]  # a warm-up tile, then two timed tiles per option
    assert used[5:65] == [1] * 60 and used[65] == 2 and used[66:129] == [1] * 63 and used[129] == 2
    assert used[130:193] == [1] * 63 and used[193:] == [2] * 7  # 2 threads became faster after tile 130: the
    # recheck at 193 times them afresh and keeps them
    assert not _threads.ThreadTuner("cuda", tiles=1000).active and not _threads.ThreadTuner("cpu", tiles=3).active


def test_a_loop_soon_after_one_thread_won_starts_on_one_thread(two_threads, monkeypatch):
    """On an oversubscribed machine each loop's exploratory tiles on two threads cost more than the rest: a loop
    within RECENT_SECONDS of a comparison that one thread won runs on one thread, times two threads only at the
    RECHECK cadence, and a comparison renews (or overturns) the hint; an older hint is ignored."""
    clock = [1000.0]
    monkeypatch.setattr(_threads.time, "perf_counter", lambda: clock[0])

    def loop(tiles, cost):
        tuner, used = _threads.ThreadTuner("cpu", tiles=tiles), []
        for _ in range(tiles):
            tuner.start()
            used.append(torch.get_num_threads())
            clock[0] += cost[torch.get_num_threads()]
            tuner.stop(entries=1)
        torch.set_num_threads(2)  # as intra_op_threads restores the user's count after each call
        return used

    busy, idle = {2: 1.0, 1: 0.1}, {2: 0.05, 1: 0.1}  # seconds per tile
    assert loop(10, busy)[:5] == [2, 2, 2, 1, 1]  # no hint: explores both; one thread wins
    clock[0] += 1.0
    assert loop(10, busy) == [1] * 10  # within RECENT_SECONDS of that comparison: one thread throughout
    used = loop(70, idle)
    assert used[:65] == [1] * 65 and used[65] == 2  # two threads timed at the RECHECK cadence, and win
    assert used[66:] == [2] * 4 and _threads.ThreadTuner._recent[2][0] == 2
    assert loop(10, busy)[:5] == [2, 2, 2, 1, 1]  # the hint now says two threads: a full exploration
    clock[0] += _threads.ThreadTuner.RECENT_SECONDS + 1
    _threads.ThreadTuner._recent[2] = (1, clock[0] - _threads.ThreadTuner.RECENT_SECONDS - 1)
    assert loop(10, busy)[:5] == [2, 2, 2, 1, 1]  # an old hint is ignored


def test_a_healthy_users_count_skips_timing_one_thread(two_threads, monkeypatch):
    """Idle cores: once the user's count has won a comparison on a workload, a later loop of that workload whose
    first tiles run as fast (within HEALTHY) does not time one thread before the RECHECK cadence; tiles 10x slower
    (a collapse), or another workload, are compared again."""
    clock = [0.0]
    monkeypatch.setattr(_threads.time, "perf_counter", lambda: clock[0])

    def loop(tiles, cost, workload="kernel A"):
        tuner, used = _threads.ThreadTuner("cpu", tiles=tiles, workload=workload), []
        for _ in range(tiles):
            tuner.start()
            used.append(torch.get_num_threads())
            clock[0] += cost[torch.get_num_threads()]
            tuner.stop(entries=1)
        torch.set_num_threads(2)
        return used

    idle, busy = {2: 0.05, 1: 0.09}, {2: 0.6, 1: 0.1}
    assert loop(10, idle)[:5] == [2, 2, 2, 1, 1]  # the first loop compares: two threads win
    assert loop(10, idle) == [2] * 10  # as fast as then: one thread is not timed
    assert loop(10, {2: 0.06, 1: 0.09}) == [2] * 10  # 1.2x slower: within HEALTHY
    used = loop(70, idle)
    assert used[:65] == [2] * 65 and used[65] == 1  # one thread still timed at the RECHECK cadence
    assert loop(10, idle, workload="kernel B")[:5] == [2, 2, 2, 1, 1]  # another workload: its own comparison
    assert loop(10, busy)[:5] == [2, 2, 2, 1, 1]  # two threads collapsed: compared, and one thread wins
    clock[0] += _threads.ThreadTuner.RECENT_SECONDS + 1
    assert loop(10, {2: 0.3, 1: 0.1})[:5] == [2, 2, 2, 1, 1]  # still 6x slower than when they won: compared
    clock[0] += _threads.ThreadTuner.RECENT_SECONDS + 1
    assert loop(10, idle, workload=None)[:5] == [2, 2, 2, 1, 1]  # no workload given: every loop compares


def test_thread_tuner_keeps_the_users_count_on_a_near_tie(two_threads, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(_threads.time, "perf_counter", lambda: clock[0])
    tuner = _threads.ThreadTuner("cpu", tiles=100)
    for _ in range(20):
        tuner.start()
        clock[0] += {2: 1.0, 1: 0.9}[torch.get_num_threads()]  # one thread only 10% faster
        tuner.stop(entries=1)
    assert tuner.best == 2

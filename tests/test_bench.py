"""The benchmark suite's smoke mode runs every workload and reports every field, so the suite never rots; its
recompilation check catches a program compiled after warm-up."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = {
    "W1_reward_model_step": "comparisons_per_s",
    "W2_sampling": "tokens_per_s",
    "W3_ppo_iteration": "seconds_per_iteration",
    "W4_sft_step": "tokens_per_s",
}


@pytest.mark.parity
def test_benchmark_smoke_reports_every_workload_for_both_frameworks_and_their_ratio():
    pytest.importorskip("torch")
    env = {**os.environ, "XLA_FLAGS": ""}
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    machine = records[0]
    assert machine["matmul_gflops"]["peak"] > 0 and machine["malloc"]["MALLOC_MMAP_MAX_"] == "0"
    assert machine["workloads"] == ["W1", "W2", "W3", "W4"]
    # The training workloads measure the matmul peak before every round of repetitions (the machine's speed
    # drifts) and report each framework's fraction of it; sampling has no FLOP count of its own.
    for workload in WORKLOADS:
        rows = [r for r in records if r.get("workload") == workload]
        (ratio,) = [r for r in rows if "ratio_oversight_over_pytorch" in r]
        frameworks = [r for r in rows if "framework" in r]
        if workload == "W2_sampling":
            assert "matmul_peak_gflops_by_round" not in ratio
            assert all("fraction_of_peak" not in r for r in frameworks)
        else:
            assert len(ratio["matmul_peak_gflops_by_round"]) == 1
            assert ratio["matmul_peak_gflops_by_round"][0] > 0
            assert all(r["fraction_of_peak"] > 0 and r["model_flops_per_s"] > 0 for r in frameworks)
    if sys.platform == "linux":  # the CPU is named, with its widest vector extension
        assert machine["cpu"].endswith(("avx512f)", "avx2)", "avx)", "none)")) and "family" in machine["cpu"]
    for workload, figure in WORKLOADS.items():
        rows = [r for r in records if r.get("workload") == workload]
        by_framework = {r["framework"]: r for r in rows if "framework" in r}
        assert {"oversight", "pytorch"} <= set(by_framework), workload
        for r in by_framework.values():
            assert r["model"] == "smoke" and r[figure] > 0 and r["seconds_median"] > 0
            assert len(r["seconds_all"]) == 1
            # each timed repetition's minor page faults, counted in its worker
            assert len(r["page_faults_all"]) == 1 and r["page_faults_all"][0] >= 0
        # The two sides did the same work: same shapes, tokens, comparisons and optimizer steps.
        works = [r["work"] for r in by_framework.values()]
        assert all(w == works[0] for w in works), (workload, works)
        (ratio,) = [r for r in rows if "ratio_oversight_over_pytorch" in r]
        assert ratio["ratio_oversight_over_pytorch"] > 0 and ratio["figure"] == figure
        assert ratio["reference"] in by_framework
    work = {w: next(r["work"] for r in records if r.get("workload") == w) for w in WORKLOADS}
    assert work["W1_reward_model_step"] == {
        "rows_x_tokens": [2, 4, 16],
        "comparisons": 12,
        "optimizer_steps": 1,
    }
    assert work["W2_sampling"] == {"prompt": [2, 8], "generated": [2, 8]}
    # 4 epochs x (4 prompts / minibatch 2) optimizer steps per PPO iteration.
    assert work["W3_ppo_iteration"]["optimizer_steps"] == 8 and work["W3_ppo_iteration"]["response"] == [4, 8]
    sft = {r["framework"]: r for r in records if r.get("workload") == "W4_sft_step" and "framework" in r}
    for r in sft.values():
        assert r["params"] > 0
    # Same architecture on both sides: the parameter counts agree (GPT-2, tied embeddings).
    assert sft["oversight"]["params"] == sft["pytorch"]["params"]


def test_fraction_of_peak_pairs_each_repetition_with_the_peak_measured_before_it(bench_script, capsys):
    bench = bench_script("run")

    class Impl:
        def __init__(self, name):
            self.name = name

        def work(self):
            return {}

    impls = [Impl("oversight"), Impl("pytorch")]
    # 10 FLOP a repetition; the machine slows down as the peaks show, and the times with it.
    times = {"oversight": [1.0, 2.0, 4.0], "pytorch": [2.0, 4.0, 8.0]}
    peaks = [10.0, 5.0, 1.0]
    bench.report("W", "m", impls, times, "seconds", None, flop=lambda impl: 10.0, peaks=peaks)
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ours, theirs, ratio = records
    # Per repetition 10/1/10, 10/2/5, 10/4/1: median 1.0 (the median time against the best peak: 0.5).
    assert ours["fraction_of_peak"] == 1.0 and theirs["fraction_of_peak"] == 0.5
    assert ours["model_flops_per_s"] == 5.0 and ours["seconds_median"] == 2.0
    assert ratio["ratio_oversight_over_pytorch"] == 2.0 and ratio["matmul_peak_gflops_by_round"] == [
        p / 1e9 for p in peaks
    ]


class _Jitted:
    """A benchmarked loop whose input shape changes after warm-up, so its jitted program recompiles."""

    name = "oversight"

    def __init__(self, report_cache: bool):
        import jax
        import jax.numpy as jnp

        self.f, self.jnp, self.n, self.report_cache = jax.jit(lambda x: x * 2), jnp, 0, report_cache

    def run(self) -> None:
        self.n += 1
        self.f(self.jnp.ones(self.n)).block_until_ready()

    def compiled(self) -> int:
        # Without its cache size, only JAX's global compilation count can see the recompile.
        return self.f._cache_size() if self.report_cache else 0


@pytest.mark.parametrize("report_cache", [True, False])
def test_recompile_after_warmup_is_caught(report_cache, bench_script):
    bench = bench_script("run")
    with pytest.raises(RuntimeError, match="recompiled after warm-up"):
        bench.time_alternating([_Jitted(report_cache)], reps=2, warmup=1)


def test_recompile_inside_a_worker_is_caught(bench_script):
    """Each implementation runs in its own worker (`Isolated`): its compilations are counted there and reported
    over the pipe. Here the worker side runs in a thread on one end of a pipe, the client on the other."""
    import multiprocessing
    import threading

    bench = bench_script("run")
    bench._Jitted = _Jitted  # the worker looks its implementation class up by name
    ours, theirs = multiprocessing.Pipe()
    server = threading.Thread(target=bench._serve, args=(theirs, "_Jitted", (False,)), daemon=True)
    server.start()
    proxy = object.__new__(bench.Isolated)
    proxy._conn, proxy._proc, proxy.page_faults = ours, server, []
    proxy.name = proxy._reply("_Jitted")
    assert proxy.name == "oversight" and proxy.compiled()[0] == 0
    with pytest.raises(RuntimeError, match="recompiled after warm-up"):
        bench.time_alternating([proxy], reps=2, warmup=1)
    # every run (1 warm-up, 2 timed) answered its minor page-fault count
    assert len(proxy.page_faults) == 3 and all(isinstance(n, int) and n >= 0 for n in proxy.page_faults)
    with pytest.raises(RuntimeError, match=r"worker \(oversight.missing_method\) failed(.|\n)*no attribute"):
        proxy.missing_method()
    proxy.close()
    assert not server.is_alive()


def test_steady_loop_passes_the_recompile_check(bench_script):
    bench = bench_script("run")

    class Steady(_Jitted):
        def run(self) -> None:
            self.f(self.jnp.ones(3)).block_until_ready()

    times = bench.time_alternating([Steady(True)], reps=2, warmup=1)
    assert len(times["oversight"]) == 2


def test_workload_selector(bench_script):
    bench = bench_script("run")
    assert bench.parse_workloads("w3,W1") == ["W1", "W3"]
    with pytest.raises(Exception, match="unknown workload"):
        bench.parse_workloads("W1,W9")


@pytest.mark.parity
def test_both_sides_compute_the_same_reward_model_loss(tmp_path, bench_script):
    """W1 is a like-for-like comparison: with the PyTorch side's weights loaded into oversight, the
    framework's `reward_model_loss` on the same rankings equals the PyTorch reference loss."""
    torch = pytest.importorskip("torch")
    import jax.numpy as jnp
    import numpy as np

    from oversight.models.hf_import import load_hf_checkpoint
    from oversight.training.reward_model import reward_model_loss

    bench = bench_script("run")
    s = bench.SMOKE_SHAPES
    ref = bench.TorchRewardModel(bench.MODELS["smoke"], s)
    with torch.no_grad():
        ref.head.weight.normal_(0.0, 1.0)  # rewards far enough apart that the loss is not just log 2
        expected, comparisons = ref.loss()
    ref.trunk.save_pretrained(tmp_path)
    model = load_hf_checkpoint(tmp_path, scalar_heads=["reward"])
    model.heads["reward"]["w"][...] = jnp.asarray(ref.head.weight.detach().numpy()[0])
    model.heads["reward"]["b"][...] = jnp.asarray(ref.head.bias.detach().numpy()[0])
    tokens = ref.tokens.numpy().reshape(s.rm_prompts, s.rm_k, s.rm_len).astype(np.int32)
    batch = {"tokens": tokens, "mask": np.ones_like(tokens), "valid": np.ones(tokens.shape[:2], np.int32)}
    loss, aux = reward_model_loss(model, batch)
    assert comparisons == int(aux["pairs"]) == s.rm_prompts * 6
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)

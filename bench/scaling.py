"""Scaling report: the same SFT and PPO steps on 1, 2, 4 and 8 simulated CPU devices for every mesh layout,
checked against the 1-device result and timed; and the end-to-end wall time of every experiment's default run.

    python bench/scaling.py                          # every layout of 1, 2, 4, 8 devices, `tiny` model (minutes)
    python bench/scaling.py --devices 1,2 --smoke    # the smoke model on 1 and 2 devices
    python bench/scaling.py --layouts 2x2x2,1x1x8    # some layouts (and the 1-device reference)
    python bench/scaling.py --markdown               # also print the results table as Markdown (stderr)
    python bench/scaling.py --experiments            # `oversight experiment=NAME` for every installed experiment
    python bench/scaling.py --experiments --only sft --override train.steps=2   # one quick run

Mesh part. For each device count N, one worker process with N forced host devices (XLA_FLAGS must be set
before JAX starts, so each N needs a fresh interpreter) runs, for every (data, fsdp, tensor) layout whose
product is N, built by the project's own `make_mesh` / `init_train_state` / `shard_batch`:
  sft: one W4 SFT step (`make_train_step` on `sft_loss`: forward, backward, AdamW) on the bench `tiny` model;
  ppo: one PPO update phase (`make_ppo_update`, the jitted update W3 and the `rlhf` experiment run: epochs x
       minibatches of `ppo_loss` steps) on a fixed synthetic rollout batch, the model with reward and value heads.
Both use the optimizer settings of their benchmark (W4: AdamW 3e-3 after 20 warm-up steps; W3: 1e-5, no
warm-up). Every layout starts from the same initial parameters (seed 0) and the same batch. The 1-device run
saves its loss and updated state (parameters and Adam moments) as the reference; every other layout reports
the largest absolute difference to it and fails beyond --tolerance (1e-5, as tests/parallel). The first call
is the compared one and the warm-up; the step is then timed (median of --reps calls after --warmup more), and
nothing may compile after the first call (bench/run.py's check: the jitted step's cache size and the process's
count of backend compilations).

What the comparison covers. `make_optimizer`'s warm-up starts at learning rate 0 (W4 warms up over 20 steps), so
the SFT step leaves the parameters unchanged: it checks the loss, the initial parameters and, through Adam's
moments (mu = 0.1 g, nu = 0.001 g^2 after one step), the gradients. The PPO update's 8 optimizer steps move
the parameters (`params_max_update`). Larger learning rates would not make a sharper check: gradient entries
at rounding level (far below Adam's eps 1e-8) differ between summation orders, and Adam scales them to steps
of order the learning rate, so at a learning rate well above the tolerance some updated entries differ by more
than it even though every gradient agrees (see bench/RESULTS.md, "Scaling").

All simulated devices share the machine's cores: step time measures the cost of sharding (collectives, smaller
per-device matmuls), not a speed-up.

Prints one JSON line per (step, layout) and a summary line; exits 1 if any layout disagrees or recompiles.

Experiments part (--experiments): each experiment `oversight --list-experiments` names runs with its default
configuration (`python -m oversight.cli experiment=NAME`, one CPU device as on a laptop) in a subprocess into a
temporary run folder; one JSON line each with its wall time; exits 1 if any run fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# bench/ is a folder of scripts, not a package: import the suite's helpers from the file next to this one.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (  # noqa: E402
    MALLOC_ENV,
    MODELS,
    _count_compiles,
    cpu_description,
    emit,
    oversight_config,
    time_alternating,
)

REPO = Path(__file__).resolve().parents[1]
DEVICE_COUNTS = (1, 2, 4, 8)
TOLERANCE = 1e-5  # max abs difference to the 1-device result, as tests/parallel and tests/experiments
STEPS = ("sft", "ppo")
Layout = tuple[int, int, int]  # (data, fsdp, tensor)


@dataclass(frozen=True)
class Shapes:
    model: str = "tiny"  # a key of bench/run.py's MODELS
    # SFT step: batch x tokens (the batch divides by 8 = the largest data x fsdp product)
    sft_batch: int = 8
    sft_len: int = 128
    # PPO update (W3's, smaller): rollout rows, minibatch rows, prompt and response tokens, epochs
    ppo_rollout: int = 16
    ppo_minibatch: int = 8
    ppo_prompt: int = 16
    ppo_response: int = 16
    ppo_epochs: int = 4


SMOKE_SHAPES = Shapes(
    model="smoke", sft_len=16, ppo_rollout=8, ppo_minibatch=4, ppo_prompt=8, ppo_response=8, ppo_epochs=2
)


def layouts(n: int) -> list[Layout]:
    """Every (data, fsdp, tensor) whose product is n, pure data parallel first."""
    out = [(d, f, n // (d * f)) for d in range(1, n + 1) for f in range(1, n + 1) if n % (d * f) == 0]
    return sorted(out, reverse=True)


def layout_name(layout: Layout) -> str:
    return "x".join(map(str, layout))


def parse_layouts(text: str) -> list[Layout]:
    """'1x1x1,2x2x2' -> [(1, 1, 1), (2, 2, 2)]."""
    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        sizes = item.split("x")
        if len(sizes) != 3 or not all(x.isdigit() and int(x) > 0 for x in sizes):
            raise argparse.ArgumentTypeError(f"layout {item!r} is not DATAxFSDPxTENSOR, e.g. 2x2x2")
        out.append(tuple(map(int, sizes)))
    if not out:
        raise argparse.ArgumentTypeError(f"no layout in {text!r}")
    return out


def parse_devices(text: str) -> list[int]:
    counts = sorted({int(x) for x in text.split(",") if x.strip()})
    if not counts or any(c < 1 for c in counts):
        raise argparse.ArgumentTypeError(f"device counts must be positive integers, got {text!r}")
    return counts


def make_plan(devices: list[int], chosen: list[Layout] | None = None) -> dict[int, list[Layout]]:
    """{device count: its layouts}: every layout of each count, or the chosen ones; always the 1-device
    layout, first, because it is the reference the others are compared with."""
    chosen = chosen or [layout for n in devices for layout in layouts(n)]
    plan: dict[int, list[Layout]] = {1: [(1, 1, 1)]}
    for layout in chosen:
        n = math.prod(layout)
        if layout not in plan.setdefault(n, []):
            plan[n].append(layout)
    return dict(sorted(plan.items()))


# --- worker side: one process per device count ---------------------------------------------------------------


def synthetic_rollout(vocab: int, s: Shapes) -> dict:
    """A fixed PPO rollout batch, a pure function of the shapes: left-padded prompts, right-padded responses.

    A fresh policy is close to uniform, so old log-probs sit near -log V and old values near 0; half the rows
    are shifted by 0.5, past both clip ranges (0.2), so the update clips some tokens and not others."""
    import numpy as np

    rng = np.random.default_rng(0)
    b, p, n = s.ppo_rollout, s.ppo_prompt, s.ppo_response
    prompt_len = rng.integers(p // 2, p + 1, size=b)
    prompt_mask = (np.arange(p)[None] >= p - prompt_len[:, None]).astype(np.int32)  # (B, P)
    prompt = rng.integers(1, vocab, size=(b, p)).astype(np.int32) * prompt_mask  # (B, P)
    response_len = rng.integers(n // 2, n + 1, size=b)
    response_mask = (np.arange(n)[None] < response_len[:, None]).astype(np.int32)  # (B, N)
    response = rng.integers(1, vocab, size=(b, n)).astype(np.int32) * response_mask  # (B, N)
    real = response_mask.astype(np.float32)  # (B, N)
    shift = 0.5 * (np.arange(b) % 2)[:, None]  # (B, 1)
    logp_noise, value_noise = rng.normal(0, 0.1, (2, b, n))  # (B, N) each
    advantages, returns = rng.normal(size=(2, b, n)) * real  # (B, N) each
    floats = {
        "old_logprobs": (-math.log(vocab) + logp_noise + shift) * real,
        "old_values": (value_noise + shift) * real,
        "advantages": advantages,
        "returns": returns,
    }
    ints = {
        "prompt": prompt,
        "prompt_mask": prompt_mask,
        "response": response,
        "response_mask": response_mask,
    }
    return {**ints, **{k: v.astype(np.float32) for k, v in floats.items()}}


def layout_mesh(layout: Layout):
    """The project's mesh for (data, fsdp, tensor) over all this process's devices, and the default rules."""
    from oversight.parallel import MeshConfig, make_mesh

    cfg = MeshConfig(data=layout[0], fsdp=layout[1], tensor=layout[2])
    return make_mesh(cfg), cfg.rules


class SFTStep:
    """The W4 SFT step (forward, backward, AdamW) on one mesh layout."""

    name = "sft"

    def __init__(self, s: Shapes, layout: Layout):
        import jax
        import numpy as np

        from oversight.parallel import shard_batch
        from oversight.training.loop import TrainConfig, init_train_state, make_optimizer, make_train_step
        from oversight.training.sft import sft_loss

        mesh, rules = layout_mesh(layout)
        cfg = oversight_config(MODELS[s.model], max_seq_len=s.sft_len)
        tx = make_optimizer(TrainConfig(grad_clip=0.0, weight_decay=0.01))  # W4's optimizer
        graphdef, self.state, shardings = init_train_state(cfg, tx, 0, mesh, rules)
        self.step = make_train_step(graphdef, sft_loss, shardings, mesh, rules)
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, cfg.vocab_size, (s.sft_batch, s.sft_len)).astype(np.int32)  # (B, T)
        ones = np.ones_like(tokens)
        self.batch = shard_batch({"tokens": tokens, "mask": ones, "loss_mask": ones}, mesh, rules)
        self._jax = jax

    def run(self) -> float:
        self.state, metrics = self.step(self.state, self.batch)
        return float(self._jax.device_get(metrics["loss"]))

    def compiled(self) -> int:
        return self.step._cache_size()

    def work(self) -> dict:
        return {"batch_x_tokens": list(self.batch["tokens"].shape), "optimizer_steps": 1}


class PPOUpdate:
    """W3's jitted PPO update phase (`make_ppo_update`) on a fixed rollout batch, on one mesh layout."""

    name = "ppo"

    def __init__(self, s: Shapes, layout: Layout):
        import jax

        from oversight.parallel import shard_batch
        from oversight.training.loop import TrainConfig, init_train_state, make_optimizer
        from oversight.training.ppo import PPOConfig, make_ppo_update

        mesh, rules = layout_mesh(layout)
        cfg = oversight_config(
            MODELS[s.model], max_seq_len=s.ppo_prompt + s.ppo_response, heads=("reward", "value")
        )
        self.ppo_cfg = PPOConfig(
            kl_coef=0.02, epochs=s.ppo_epochs, minibatches=s.ppo_rollout // s.ppo_minibatch
        )
        tx = make_optimizer(TrainConfig(learning_rate=1e-5, warmup_steps=0, grad_clip=0.0, weight_decay=0.0))
        graphdef, self.state, shardings = init_train_state(cfg, tx, 0, mesh, rules)
        self.update = make_ppo_update(graphdef, self.ppo_cfg, s.ppo_rollout, shardings, mesh, rules)
        self.rollout = shard_batch(synthetic_rollout(cfg.vocab_size, s), mesh, rules)
        self.key, self._jax = jax.random.key(3), jax

    def run(self) -> float:
        self.state, stats = self.update(self.state, self.rollout, self.key)
        return float(self._jax.device_get(stats["loss"]))  # mean over the minibatch steps

    def compiled(self) -> int:
        return self.update._cache_size()

    def work(self) -> dict:
        steps = self.ppo_cfg.epochs * self.ppo_cfg.minibatches
        rows = [
            self.rollout["prompt"].shape[0],
            self.rollout["prompt"].shape[1],
            self.rollout["response"].shape[1],
        ]
        return {"rollout_x_prompt_x_response": rows, "optimizer_steps": steps}


def flat_state(state) -> dict:
    """{path: host array} of a (model, optimizer) state; paths start with [0] (model) or [1] (optimizer)."""
    import jax
    import numpy as np

    leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(state))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def compare(loss: float, state: dict, reference) -> dict:
    """Largest absolute differences to the reference (a mapping with '__loss__' and the same state paths)."""
    import numpy as np

    missing = set(state) ^ (set(reference) - {"__loss__"})
    if missing:
        raise ValueError(f"state paths differ from the reference's: {sorted(missing)[:5]}")
    err = {"params": 0.0, "opt_state": 0.0}
    for path, value in state.items():
        part = "params" if path.startswith("[0]") else "opt_state"
        diff = np.abs(value.astype(np.float64) - reference[path].astype(np.float64))
        err[part] = max(err[part], float(diff.max(initial=0.0)))
    return {"loss": abs(loss - float(reference["__loss__"])), **err}


def max_err(record: dict) -> float:
    return max(record["loss_abs_err"], record["params_max_abs_err"], record["opt_state_max_abs_err"])


def run_worker(
    n: int, chosen: list[Layout], s: Shapes, reference_dir: Path, reps: int, warmup: int, tolerance: float
) -> None:
    """In a process with n devices: both steps on each chosen layout of n devices; one JSON line each."""
    import jax
    import numpy as np

    if jax.device_count() != n:
        raise RuntimeError(
            f"expected {n} devices, JAX sees {jax.device_count()} (XLA_FLAGS={os.environ.get('XLA_FLAGS')!r})"
        )
    _count_compiles()
    for cls in (SFTStep, PPOUpdate):
        ref_path = reference_dir / f"{cls.name}.npz"
        for layout in chosen:
            start = time.perf_counter()
            impl = cls(s, layout)
            initial = flat_state(impl.state)
            loss = impl.run()  # the compared call, from the initial state; also the warm-up
            first_call_s = time.perf_counter() - start
            state = flat_state(impl.state)
            moved = max(
                float(np.abs(state[k] - initial[k]).max(initial=0.0)) for k in state if k.startswith("[0]")
            )
            del initial
            is_reference = layout == (1, 1, 1)
            if is_reference:
                np.savez(ref_path, __loss__=np.float64(loss), **state)
            with np.load(ref_path) as reference:
                err = compare(loss, state, reference)
            record = {
                "step": cls.name,
                "devices": n,
                "layout": layout_name(layout),
                "mesh": dict(zip(("data", "fsdp", "tensor"), layout, strict=True)),
                "reference": is_reference,
                "loss": loss,
                "loss_abs_err": err["loss"],
                "params_max_abs_err": err["params"],
                "opt_state_max_abs_err": err["opt_state"],
                "agree": max(err.values()) <= tolerance,
                "params_max_update": moved,  # how far the step moved the parameters
                "first_call_s": first_call_s,  # build, compile, host copy of the initial state, the call
                "work": impl.work(),
            }
            try:
                times = time_alternating([impl], reps, warmup)[cls.name]
                record.update(seconds_median=statistics.median(times), seconds_all=times, recompiled=False)
            except RuntimeError as e:  # something compiled after the first call
                record.update(seconds_median=None, seconds_all=None, recompiled=str(e))
            emit(record)


# --- parent side -------------------------------------------------------------------------------------------


def worker_env(n: int) -> dict[str, str]:
    """This environment with n forced host devices (replacing any device count already in XLA_FLAGS) and the
    benchmark suite's allocator settings."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    flags.append(f"--xla_force_host_platform_device_count={n}")
    return {**os.environ, **MALLOC_ENV, "XLA_FLAGS": " ".join(flags)}


def mesh_report(
    plan: dict[int, list[Layout]], smoke: bool, reps: int, warmup: int, tolerance: float
) -> list[dict]:
    """One worker per device count, the 1-device one first (it writes the reference); their records."""
    records = []
    with tempfile.TemporaryDirectory(prefix="oversight_scaling_") as tmp:
        for n, chosen in plan.items():
            command = [sys.executable, __file__, "--worker", str(n), "--reference-dir", tmp]
            command += ["--layouts", ",".join(map(layout_name, chosen))]
            command += ["--reps", str(reps), "--warmup", str(warmup), "--tolerance", str(tolerance)]
            command += ["--smoke"] if smoke else []
            proc = subprocess.Popen(command, env=worker_env(n), stdout=subprocess.PIPE, text=True)
            for line in proc.stdout:  # relay the worker's lines as they come
                if line.startswith("{"):
                    records.append(json.loads(line))
                print(line, end="", flush=True)
            if proc.wait() != 0:
                records.append(
                    {"devices": n, "error": f"worker for {n} devices exited with {proc.returncode}"}
                )
                emit(records[-1])
                if n == 1:
                    break  # no reference to compare with
    return records


def failures(records: list[dict], plan: dict[int, list[Layout]]) -> list[str]:
    """What went wrong: worker errors, disagreeing or recompiling layouts, layouts that never reported."""
    out = [r["error"] for r in records if "error" in r]
    for r in (r for r in records if "step" in r):
        if not r["agree"]:
            out.append(
                f"{r['step']} {r['layout']}: differs from 1 device (loss {r['loss_abs_err']:.2e}, "
                f"params {r['params_max_abs_err']:.2e}, optimizer state {r['opt_state_max_abs_err']:.2e})"
            )
        if r["recompiled"]:
            out.append(f"{r['step']} {r['layout']}: {r['recompiled']}")
    done = {(r["step"], r["layout"]) for r in records if "step" in r}
    expected = [(step, layout_name(l)) for step in STEPS for chosen in plan.values() for l in chosen]
    out += [f"{step} {layout}: no result" for step, layout in expected if (step, layout) not in done]
    return out


def summary(records: list[dict], problems: list[str]) -> dict:
    steps = [r for r in records if "step" in r]
    return {
        "summary": "mesh",
        "layouts": len({r["layout"] for r in steps}),
        "max_abs_err": {
            step: max((max_err(r) for r in steps if r["step"] == step), default=None) for step in STEPS
        },
        "all_agree": not problems,
        "problems": problems,
    }


def markdown_table(records: list[dict]) -> str:
    """One row per layout: devices, layout, then per step the median seconds and the max abs error."""
    by = {(r["step"], r["layout"]): r for r in records if "step" in r}
    rows = [
        "| devices | data × fsdp × tensor | SFT s/step | SFT max abs error | PPO s/update | PPO max abs error |",
        "|---|---|---|---|---|---|",
    ]
    for r in (r for r in records if r.get("step") == STEPS[0]):
        cells = [str(r["devices"]), r["layout"].replace("x", " × ")]
        for step in STEPS:
            x = by.get((step, r["layout"]))
            if x is None:
                cells += ["–", "–"]
                continue
            cells.append("–" if x["seconds_median"] is None else f"{x['seconds_median']:.3f}")
            cells.append("reference" if x["reference"] else f"{max_err(x):.1e}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def list_experiments() -> list[str]:
    """The experiment names `oversight --list-experiments` prints (one per line, name first)."""
    command = [sys.executable, "-m", "oversight.cli", "--list-experiments"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True, timeout=120)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def experiment_command(name: str, run_dir: Path, overrides: list[str]) -> list[str]:
    """`oversight experiment=NAME [overrides] hydra.run.dir=RUN_DIR` as a command line of this interpreter."""
    cli = [sys.executable, "-m", "oversight.cli"]
    return [*cli, f"experiment={name}", *overrides, f"hydra.run.dir={run_dir}"]


def experiments_report(names: list[str], overrides: list[str]) -> list[dict]:
    """Each experiment's run, timed end to end (interpreter start to exit); one record each."""
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, as a user's default run
    records = []
    with tempfile.TemporaryDirectory(prefix="oversight_experiments_") as tmp:
        for name in names:
            run_dir = Path(tmp) / name
            start = time.perf_counter()
            proc = subprocess.run(
                experiment_command(name, run_dir, overrides),
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
            )
            record = {
                "experiment": name,
                "overrides": overrides,
                "wall_s": time.perf_counter() - start,
                "returncode": proc.returncode,
                "summary_written": (run_dir / "summary.json").is_file(),
            }
            if proc.returncode != 0:
                record["stderr_tail"] = proc.stderr[-2000:]
            emit(record)
            records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=parse_devices, default=list(DEVICE_COUNTS), help="e.g. 1,2,4,8")
    parser.add_argument(
        "--layouts", type=parse_layouts, help="only these, e.g. 2x1x1,2x2x2 (1x1x1 always runs)"
    )
    parser.add_argument("--smoke", action="store_true", help="the smoke model and shapes: seconds per layout")
    parser.add_argument(
        "--reps", type=int, default=3, help="timed calls per step and layout (median reported)"
    )
    parser.add_argument("--warmup", type=int, default=0, help="untimed calls after the compared first call")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument(
        "--markdown", action="store_true", help="print the results table as Markdown (stderr)"
    )
    parser.add_argument(
        "--experiments", action="store_true", help="time every experiment's default run instead"
    )
    parser.add_argument(
        "--only", type=lambda t: [x for x in t.split(",") if x], help="experiments, e.g. sft,rlhf"
    )
    parser.add_argument(
        "--override", action="append", default=[], help="Hydra override for every experiment run (repeatable)"
    )
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: run one device count
    parser.add_argument("--reference-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shapes = SMOKE_SHAPES if args.smoke else Shapes()

    if args.worker is not None:
        run_worker(
            args.worker, args.layouts, shapes, args.reference_dir, args.reps, args.warmup, args.tolerance
        )
        return

    start = time.perf_counter()
    header = {"cpu": cpu_description(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    header["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if args.experiments:
        installed = list_experiments()
        unknown = sorted(set(args.only or []) - set(installed))
        if unknown:
            sys.exit(f"unknown experiment(s) {unknown}; installed: {installed}")
        names = [n for n in installed if args.only is None or n in args.only]
        emit({"report": "experiments", **header, "experiments": names, "overrides": args.override})
        records = experiments_report(names, args.override)
        failed = [r["experiment"] for r in records if r["returncode"] != 0]
        emit({"summary": "experiments", "wall_s": time.perf_counter() - start, "failed": failed})
        sys.exit(1 if failed else 0)

    plan = make_plan(args.devices, args.layouts)
    emit(
        {
            "report": "mesh",
            **header,
            "layouts": {n: list(map(layout_name, chosen)) for n, chosen in plan.items()},
            "shapes": asdict(shapes),
            "malloc": MALLOC_ENV,
            "reps": args.reps,
            "warmup": args.warmup,
            "tolerance": args.tolerance,
        }
    )
    records = mesh_report(plan, args.smoke, args.reps, args.warmup, args.tolerance)
    problems = failures(records, plan)
    end = {"wall_s": time.perf_counter() - start, "loadavg_at_end": os.getloadavg()}
    emit({**summary(records, problems), **end})
    if args.markdown:
        print(markdown_table(records), file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

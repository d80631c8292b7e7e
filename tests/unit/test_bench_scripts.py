"""CPU smoke runs of the training benchmarks at tiny shapes (the real numbers come from the GPU machine).

bench/train_throughput.py runs full training steps; bench/ddp_speedup.py trains with the real
Trainer on 1 process and on 2 gloo processes with the same global batch, so their losses must match.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def bench_module(name: str):
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(f"bench.{name}")


@pytest.mark.timeout(60)
def test_train_throughput_tiny_cpu(tmp_path):
    bench = bench_module("train_throughput")
    out_md, out_json = tmp_path / "table.md", tmp_path / "r.json"
    threads = bench.torch.get_num_threads()
    bench.torch.set_num_threads(1)  # OpenMP threads spinning on a shared 2-core machine cost more than they give
    try:
        rc = bench.main(["--tiny", "--steps", "3", "--warmup", "1", "--out", str(out_md), "--json", str(out_json)])
    finally:
        bench.torch.set_num_threads(threads)
    assert rc == 0
    (r,) = json.loads(out_json.read_text())["results"]
    assert r["shape"] == bench.TINY_SHAPES
    shape = bench.parse_shape(r["shape"])
    assert len(r["step_ms_all"]) == 3 and all(ms > 0 for ms in r["step_ms_all"])
    assert 0 < r["fwd_bwd_ms"] < r["step_ms"]  # the optimizer part of a full step takes time too
    assert r["tokens_per_s"] == pytest.approx(shape.batch * shape.ctx_len / r["step_ms"] * 1e3)
    table = out_md.read_text()
    assert "| shape | params |" in table and f"| {r['shape']} |" in table and "CPU" in table


def test_throughput_rows_compare_with_the_reference():
    bench = bench_module("train_throughput")
    row = bench.table_row({"shape": "L12-D512-V512-T4096-B8", "params": 41.5e6, "wkv_backend": "cuda",
                           "step_ms": 100.0, "fwd_bwd_ms": 95.0, "tokens_per_s": 8 * 4096 / 0.1, "peak_gib": 15.3})
    cells = dict(zip(bench.COLUMNS, row))
    assert cells["ref step ms (fwd+bwd)"] == "134.0"
    assert cells["speed ours/ref (full step)"] == f"{8 * 4096 / 0.1 / 245e3:.2f}x"
    assert cells["speed ours/ref (fwd+bwd)"] == f"{134 / 95:.2f}x"
    assert cells["peak ours/ref"] == "1.00x"


def test_bad_command_lines_say_what_to_do(capsys):
    bench = bench_module("train_throughput")
    with pytest.raises(SystemExit) as exc:
        bench.main(["--tiny", "--shapes", "L2-D100-V64-T16-B1"])
    assert exc.value.code == 2
    assert "multiple of the head size 64" in capsys.readouterr().err
    if not bench.torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench.main([])
        assert "--tiny" in capsys.readouterr().err
    ddp = bench_module("ddp_speedup")
    with pytest.raises(SystemExit):
        ddp.main(["--tiny", "--batch", "3"])
    assert "multiple of --micro-batch" in capsys.readouterr().err


@pytest.mark.timeout(120)
@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_ddp_speedup_tiny_gloo_two_processes(tmp_path, parallel):
    bench = bench_module("ddp_speedup")
    out_json = tmp_path / "r.json"
    assert bench.main(["--tiny", "--parallel", parallel, "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert report["parallel"] == parallel
    one, two = report["runs"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["steps_timed"] == two["steps_timed"] == 3  # steps 2-4, timed from the end of warm-up step 1
    # same global batch on both: the trainer's loss sequence matches (gloo all-reduce, fp32)
    assert len(one["losses"]) == len(two["losses"]) == 4
    for a, b in zip(one["losses"], two["losses"]):
        assert math.isfinite(a) and a == pytest.approx(b, rel=1e-4)
    assert report["speedup"] == pytest.approx(two["tokens_per_s"] / one["tokens_per_s"])


def test_performance_round_trip_bench_prints_the_table_and_writes_the_set(tmp_path, capsys):
    bench = bench_module("performance_roundtrip")
    assert bench.main(["--limit", "2", "--presets", "score", "performance", "--write", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| score | REMI | 339 |" in out and "| performance | TSD |" in out
    assert "goal: performance preset onset p95 <= 10 ms: met" in out
    assert len(list(tmp_path.glob("*.mid"))) == 2


@pytest.mark.slow
def test_train_cpu_bench_runs_the_real_trainer_and_prints_its_row(capsys):
    bench_module("train_cpu").main(["--steps", "4", "--skip", "1", "--threads", "1"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| tiny |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "1" and float(cells[2]) > 0 and float(cells[3]) > 0  # one torch thread, steps/s, tokens


@pytest.mark.slow
def test_train_ema_cpu_bench_trains_once_per_decay_and_tabulates_raw_beside_each_average(capsys):
    bench_module("train_ema_cpu").main(["--steps", "4", "--val-every", "2", "--val-batches", "1", "--decays", "0.5,0.9",
                                        "--set", "optim.warmup_steps=0"])
    out = capsys.readouterr().out
    assert "| step | raw | EMA 0.5 | EMA 0.9 |" in out and "note: the raw weights" not in out  # the same training twice
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"2", "4", "lowest (step)", "last"}
    raw, ema_05, ema_09 = (float(c) for c in rows["4"])
    assert len({raw, ema_05, ema_09}) == 3  # three different sets of weights scored
    assert rows["last"] == rows["4"]


@pytest.mark.timeout(120)
def test_decode_gpu_cpu_smoke_writes_one_json_with_every_batch(tmp_path, capsys):
    bench = bench_module("decode_gpu")
    out_json = tmp_path / "decode.json"
    rc = bench.main(["--device", "cpu", "--sizes", "2x64", "--batches", "1,3", "--steps", "4", "--warmup", "1",
                     "--modes", "traced", "--no-peer", "--label", "smoke", "--json", str(out_json)])
    assert rc == 0
    rows = json.loads(out_json.read_text())["results"]
    assert [(r["size"], r["batch"], r["mode"], r["label"]) for r in rows] == [("L2-D64", 1, "traced", "smoke"), ("L2-D64", 3, "traced", "smoke")]
    assert all(r["median_ms"] > 0 and r["p99_ms"] >= r["median_ms"] for r in rows)
    assert all(r["sampler"] == "device" and r["weight_dtype"] == "float32" for r in rows)
    # the levers' switches: the host sampler (the logits copied there) and a bf16 weight cache
    assert bench.main(["--device", "cpu", "--sizes", "2x64", "--batches", "2", "--steps", "3", "--warmup", "1", "--modes", "eager",
                       "--no-peer", "--no-triton", "--sampler", "host", "--rnn-dtype", "bf16", "--json", str(out_json)]) == 0
    [row] = json.loads(out_json.read_text())["results"]
    assert (row["sampler"], row["weight_dtype"], row["triton"]) == ("host", "bfloat16", None)
    with pytest.raises(bench.BenchError):
        bench.main(["--device", "cpu", "--modes", "graphd", "--no-peer"])
    assert "unknown mode(s) graphd" in capsys.readouterr().err


def test_rnn_step_ops_counts_per_layer(tmp_path):
    bench = bench_module("rnn_step_ops")
    out_json = tmp_path / "ops.json"
    assert bench.main(["--sizes", "2x64,3x64", "--json", str(out_json)]) == 0
    rows = json.loads(out_json.read_text())
    assert [r["size"] for r in rows] == ["L2-D64", "L3-D64"]
    # the per-layer count does not depend on depth, and the step's products are batched
    assert abs(rows[0]["ops_per_layer"] - rows[1]["ops_per_layer"]) < 3
    assert rows[1]["by_op"]["bmm"] >= 5 * 3


def test_rnn_step_ops_counts_the_triton_step_too(tmp_path):
    """--triton: the step with its Triton kernels, interpreted on the CPU (a child process, as
    Triton reads TRITON_INTERPRET when first imported): far fewer ops a layer."""
    import subprocess

    if importlib.util.find_spec("triton") is None:
        pytest.skip("needs triton (pip install triton)")
    out_json = tmp_path / "ops.json"
    done = subprocess.run([sys.executable, str(REPO / "bench" / "rnn_step_ops.py"), "--sizes", "2x64", "--triton", "--json", str(out_json)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    pytorch, triton = json.loads(out_json.read_text())
    assert (pytorch["step"], triton["step"]) == ("pytorch", "triton")
    assert triton["by_op"]["triton:time_mix_tail"] == 2 and triton["ops_per_layer"] < pytorch["ops_per_layer"] / 2


def test_gpu_val_summary_gives_the_lowest_loss_of_the_weights_and_of_their_average(tmp_path):
    from engine.metric_records import ValRecord
    from engine.train.metrics import MetricsLog

    sys.path.insert(0, str(REPO / "bench" / "gpu"))
    import val_summary

    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step, raw, ema in ((50, 1.0, 1.1), (100, 0.8, 0.78), (150, 0.85, 0.79)):
        log.write(ValRecord(step=step, val_loss=raw, ema_val_loss=ema))
    log.close()
    assert val_summary.lowest(tmp_path / "metrics.jsonl") == [
        "  raw: lowest val 0.8000 at step 100, last 0.8500 at step 150",
        "  ema: lowest val 0.7800 at step 100, last 0.7900 at step 150",
    ]

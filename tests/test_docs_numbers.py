"""Numbers quoted in the README, the docs and the model card come from the JSON they cite:
these tests fail when one drifts from its source."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
GPU = REPO / "reports" / "nudt_gpu_522ep"
CPU = REPO / "reports" / "cpu"


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _row(text: str, marker: str) -> str:
    return next(line for line in text.splitlines() if marker in line)


def _check(row: str, m: dict) -> None:
    """The row quotes the run's IoU, nIoU, F1, Pd (%, 2 decimals) and Fa (x1e-6)."""
    for value in (pct(m["iou"]), pct(m["niou"]), pct(m["f1"]), pct(m["pd"]), f"{m['fa'] * 1e6:.2f}"):
        assert value in row, (value, row)


def test_readme_accuracy_row_of_the_gpu_run():
    m = json.loads((GPU / "metrics.json").read_text())
    _check(_row(README, "522 epochs"), m)


def test_readme_and_report_quote_the_gpu_ablation():
    m = json.loads((GPU / "unet" / "metrics.json").read_text())
    s = json.loads((GPU / "metrics.json").read_text())
    _check(_row(README, "`unet` (the ablation) under the same 522-epoch"), m)
    gain = f"{100 * (s['iou'] - m['iou']):.2f} IoU points"
    assert gain in " ".join(README.split())
    report = (GPU / "README.md").read_text()
    assert gain in " ".join(report.split())
    _check(_row(report, "| `unet` (`unet/metrics.json`)"), m)
    _check(_row(report, "| `sgem_unet` (`metrics.json`)"), s)


def test_readme_and_report_quote_the_gpu_ablations_second_seed():
    s = json.loads((GPU / "metrics.json").read_text())
    m0 = json.loads((GPU / "unet" / "metrics.json").read_text())
    m1 = json.loads((GPU / "unet_s1" / "metrics.json").read_text())
    assert m1["checkpoint"]["epoch"] == 522 and m1["split"] == "test" and m1["counts"]["images"] == 664
    report = (GPU / "README.md").read_text()
    _check(_row(README, "522-epoch protocol, seed 1"), m1)
    _check(_row(report, "| `unet`, seed 1 (`unet_s1/metrics.json`"), m1)
    mean = {k: (m0[k] + m1[k]) / 2 for k in ("iou", "niou", "f1", "pd", "fa")}
    _check(_row(report, "| `unet`, mean of seeds 0 and 1 |"), mean)
    gain = f"{100 * (s['iou'] - mean['iou']):.2f}"
    for text in (README, report):
        assert f"{gain} against the U-Net's mean" in " ".join(text.split())
    spread = f"{100 * abs(m0['iou'] - m1['iou']):.2f}"
    assert f"range is {spread}" in " ".join(README.split())


def test_model_card_rows_come_from_their_evaluations():
    card = (REPO / "sgem" / "weights" / "MODEL_CARD.md").read_text()
    for marker, source in (("fp32 training weights, fp32 on a CPU", "metrics.json"),
                           ("these fp16 weights, fp32 on a CPU", "metrics_shipped_fp16_weights.json"),
                           ("these fp16 weights, bf16 autocast", "metrics_shipped_fp16_weights_bf16.json")):
        _check(_row(card, marker), json.loads((GPU / source).read_text()))
    assert "BF16_" not in card and "FP32_" not in card


def test_readme_gpu_speed_claims():
    rows = json.loads((GPU / "bench_cuda.json").read_text())["results"]
    fps = {(r["model"], r["mode"]): r["fps"] for r in rows}
    text = " ".join(README.split())
    assert f"eager fp32 `sgem_unet` {fps[('sgem_unet', 'fp32')]:.0f} FPS" in text
    assert f"DNANet {fps[('dnanet', 'fp32')]:.1f}, ACM {fps[('acm', 'fp32')]:.0f}" in text
    assert f"{fps[('sgem_unet', 'fp32')] / fps[('dnanet', 'fp32')]:.1f}x DNANet's FPS" in text
    assert f"{fps[('sgem_unet', 'fp32')] / fps[('acm', 'fp32')]:.2f}x ACM's" in text
    assert f"reaches {fps[('sgem_unet', 'fp32+graph')]:.0f} FPS in fp32 and {fps[('sgem_unet', 'bf16+cl+graph')]:.0f}" \
           in text
    assert f"ACM {fps[('acm', 'fp32+graph')]:,.0f}" in text
    assert f"ACM is {fps[('acm', 'fp32+graph')] / fps[('sgem_unet', 'fp32+graph')]:.1f}x faster" in text


def test_readme_complexity_table():
    for name in ("sgem_unet", "unet"):
        p = json.loads((REPO / "reports" / "profile" / f"{name}_cpu_fp32_b1.json").read_text())
        row = _row(README, f"| `{name}`")
        for value in (f"{p['params'] / 1e6:.3f} M", f"{p['macs_module'] / 1e9:.3f} G", f"{p['macs_full'] / 1e9:.3f} G"):
            assert value in row, (name, value, row)


def test_demo_reference_table_matches_its_json():
    ref = json.loads((REPO / "reports" / "reference" / "demo.json").read_text())
    md = (REPO / "reports" / "reference" / "demo.md").read_text()
    for run in ref["runs"]:
        row = _row(md, f"| {run['cpu']} |")
        assert run["commit"] in row
        for value in (pct(run["iou"]), pct(run["niou"]), pct(run["f1"]), pct(run["pd"]), f"{run['fa'] * 1e6:.0f}"):
            assert value in row, (value, row)


@pytest.mark.parametrize("doc", ["README.md", "docs/training.md", "docs/architecture.md", "docs/protocols.md",
                                 "docs/gpu.md", "sgem/weights/MODEL_CARD.md", "reports/cpu/README.md",
                                 "reports/cpu/MODEL_CARD.md", "reports/cpu_pilots/README.md"])
def test_files_the_docs_point_to_exist(doc):
    text = (REPO / doc).read_text()
    for ref in set(re.findall(r"`((?:reports|docs|sgem|tools|tests)/[\w./-]+\.(?:md|json|py|sh|pt|png|sha256|yaml))`",
                              text)):
        assert (REPO / ref).exists(), f"{doc} cites {ref}, which does not exist"


def test_readme_cpu_deployment_claims():
    rows = {r["path"]: r for r in json.loads((REPO / "reports" / "bench_cpu_deploy.json").read_text())["rows"]}
    text = " ".join(README.split())
    ref, ov = rows["torch fp32 (eager, the reference)"], rows["openvino bf16"]
    assert f"PyTorch fp32 eager runs at {ref['b1_fps']:.2f} FPS" in text
    bf = rows["torch bf16 autocast + channels_last"]
    assert f"channels_last at {bf['b1_fps']:.2f} ({bf['b1_speedup']:.1f}x)" in text
    assert f"OpenVINO bf16 at {ov['b1_fps']:.2f} FPS ({ov['b1_speedup']:.1f}x), with the test IoU " \
           f"{-100 * ov['iou_minus_reference']:.2f} points below fp32** ({100 * ov['iou']:.2f} against " \
           f"{100 * ref['iou']:.2f})" in text
    assert f"ONNX Runtime fp32 {rows['onnxruntime fp32']['b1_fps']:.2f} and int8 " \
           f"{rows['onnxruntime int8 (static, QDQ)']['b1_fps']:.2f}" in text


def test_readme_cpu_deployment_claims_without_native_bf16():
    report = json.loads((REPO / "reports" / "bench_cpu_deploy_nobf16.json").read_text())
    assert report["environment"]["native_bf16"] is False
    rows = {r["path"]: r for r in report["rows"]}
    text = " ".join(README.split())
    ref, i8 = rows["torch fp32 (eager, the reference)"], rows["onnxruntime int8 (static, QDQ)"]
    assert f"PyTorch fp32 eager runs at {ref['b1_fps']:.2f} FPS and the best paths are ONNX Runtime fp32 " \
           f"({rows['onnxruntime fp32']['b1_fps']:.2f}) and int8 ({i8['b1_fps']:.2f}, {i8['b1_speedup']:.1f}x)" in text
    assert f"({rows['torch bf16 autocast + channels_last']['b1_fps']:.2f} FPS with channels_last)" in text
    # the best measured path is one of the two named
    best = max(rows.values(), key=lambda r: r["b1_fps"])["path"]
    assert best in ("onnxruntime fp32", "onnxruntime int8 (static, QDQ)"), best


def test_readme_u8s8_claims_come_from_their_bench_and_evaluation():
    report = json.loads((REPO / "reports" / "bench_cpu_deploy_nobf16_u8s8.json").read_text())
    acc = json.loads((REPO / "reports" / "bench_cpu_deploy_nobf16_u8s8_accuracy.json").read_text())
    assert acc["checkpoint"]["onnx_precision"] == "int8" and acc["split"] == "test"
    i8 = next(r for r in report["rows"] if r["path"] == "onnxruntime int8 (static, QDQ)")
    text = " ".join(README.split())
    assert f"int8 runs there at {i8['b1_fps']:.2f} FPS, **{i8['b1_speedup']:.1f}x fp32 eager** " \
           f"({i8['b8_speedup']:.1f}x at batch 8), test IoU {100 * acc['iou']:.2f}" in text
    md = " ".join((REPO / "reports" / "bench_cpu_deploy_nobf16_u8s8.md").read_text().split())
    assert f"Test IoU of the U8S8 model: {100 * acc['iou']:.2f}" in md


def test_training_doc_speeds_without_native_bf16_come_from_their_measurement():
    doc = " ".join((REPO / "docs" / "training.md").read_text().split())
    part = doc[doc.index("**A CPU without native bf16.**"):doc.index("## Data")]
    rows = [json.loads(line) for line in
            (REPO / "reports" / "cpu_pilots" / "train_speed_nobf16.jsonl").read_text().splitlines()]
    assert rows and not any(r["native_bf16"] for r in rows)
    quoted = re.findall(r"\d+\.\d\d", part)
    for r in rows:   # every speed and its ratio to fp32 is quoted
        assert f"{r['images_per_s']:.2f}" in quoted, r
    cl = {r["model"]: r for r in rows if r["layout"] == "fp32 + channels_last"}
    assert f"{cl['sgem_unet']['images_per_s']:.2f} in fp32 + channels_last ({cl['sgem_unet']['x_fp32']:.2f}x)" in part
    hist = json.loads((REPO / "reports" / "cpu_pilots" / "nobf16_timing_history.json").read_text())
    at256 = next(r for r in hist if r["train/crop"] == 256)
    assert f"{at256['train/seconds']:.0f} s per epoch at 256 ({at256['train/images_per_s']:.2f} images/s)" in part


def test_training_doc_pilot_rows_come_from_the_pilots_histories():
    doc = (REPO / "docs" / "training.md").read_text()
    for name in ("A", "B", "B_full", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N"):
        history = json.loads((REPO / "reports" / "cpu_pilots" / f"{name}_history.json").read_text())
        vals = [pct(r["val/iou"]) for r in history if "val/iou" in r]
        # J and K were completed from I's epoch-80 checkpoint: their rows quote only the last epoch
        vals = f"**{vals[-1]}** at 100" if name in ("J", "K") else ", ".join(vals)
        row = _row(doc, f"| {name} |")
        row = row if name in ("J", "K") else row.replace("**", "")
        assert vals in row, (name, vals, row)
        if name in ("A", "B"):   # D ran on a shared machine: its speed is not quoted as a figure
            speed = sorted(r["train/images_per_s"] for r in history)[len(history) // 2]
            assert f"| {speed:.1f} |" in row, (name, speed, row)


def test_cpu_profile_numbers_in_the_readme_and_its_report():
    metrics = json.loads((CPU / "metrics.json").read_text())
    unet = json.loads((CPU / "train" / "ablation.json").read_text())["models"]["unet"]["mean"]
    report = (CPU / "README.md").read_text()
    for text in (README, report):
        _check(_row(text, "`sgem_unet` (this profile)" if text is report else "`cpu` profile, `sgem_unet`"), metrics)
        _check(_row(text, "`unet`, the ablation" if text is report else "`cpu` profile, `unet`"), unet)
    flat = " ".join(README.split())
    assert f"`sgem_unet` reaches IoU {pct(metrics['iou'])}" in flat and f"scores {pct(unet['iou'])}" in flat
    sgem_mean = json.loads((CPU / "train" / "ablation.json").read_text())["models"]["sgem_unet"]["mean"]
    _check(_row(report, "`sgem_unet`, mean of seeds"), sgem_mean)
    d = 100 * (unet["iou"] - sgem_mean["iou"])   # means against means
    assert f"{abs(d):.2f} IoU points {'above' if d > 0 else 'below'} `sgem_unet`" in " ".join(report.split())
    ablation = json.loads((CPU / "train" / "ablation.json").read_text())
    seed1 = next(r for r in ablation["models"]["sgem_unet"]["runs"] if r["seed"] == 1)
    spread = f"{100 * ablation['largest_seed_range_iou']:.2f}"
    assert f"{pct(seed1['iou'])} with seed 1" in flat and f"({spread} points)" in flat
    gpu = " ".join((GPU / "README.md").read_text().split())
    assert f"`sgem_unet` leads by {-d:.2f} points ({pct(sgem_mean['iou'])} against {pct(unet['iou'])}, " \
           f"seed-to-seed ranges up to {spread}" in gpu


def test_cpu_model_card_rows_come_from_their_evaluations():
    card = (CPU / "MODEL_CARD.md").read_text()
    for marker, source in (("fp32 training weights, fp32", "metrics.json"),
                           ("these fp16 weights, fp32", "metrics_shipped_fp16_weights.json"),
                           ("these fp16 weights, bf16 autocast", "metrics_shipped_fp16_weights_bf16.json")):
        _check(_row(card, marker), json.loads((CPU / source).read_text()))


def test_training_doc_fit_check_rows_and_official_pilot_results_come_from_their_files():
    doc = (REPO / "docs" / "training.md").read_text()
    fit = REPO / "reports" / "cpu_pilots" / "fit_check"
    for marker, names in (("| pilot B_full (validation protocol) |", ["B_full_pilot"]),
                          ("| pilot G (validation protocol) |", ["G_pilot"]),
                          ("| pilots I, J, K, L, M, N (validation protocol, final weights) |",
                           ["pilot_I_final", "pilot_J_final", "pilot_K_final", "pilot_L_final", "pilot_M_final", "pilot_N_final"]),
                          ("| G, official split, seed 0 |", ["G_official_sgem_unet_s0"]),
                          ("| G, official split, seed 0, `unet` |", ["G_official_unet_s0"]),
                          ("| L, official split, seed 0 |", ["L_official_sgem_unet_s0"]),
                          ("| O, official split, seed 0 |", ["O_official_sgem_unet_s0"]),
                          ("| O, official split, seed 1 |", ["O_official_sgem_unet_s1"]),
                          ("| O, official split, `unet` seeds 0 and 1 |", ["O_official_unet_s0", "O_official_unet_s1"]),
                          ("| Q, official split, seeds 0 and 1 |", ["Q_official_sgem_unet_s0", "Q_official_sgem_unet_s1"]),
                          ("| P, official split, seeds 0 and 1 |", ["P_official_sgem_unet_s0", "P_official_sgem_unet_s1"]),
                          ("| R, official split, seeds 0 and 1 |", ["R_official_sgem_unet_s0", "R_official_sgem_unet_s1"]),
                          ("| B, official split, seed 0 (the shipped weights) |", ["B_official_sgem_unet_s0"]),
                          ("| B, official split, seed 1 |", ["B_official_sgem_unet_s1"]),
                          ("| B, official split, `unet` seeds 0 and 1 |", ["B_official_unet_s0", "B_official_unet_s1"]),
                          ("| the paper's protocol for 522 epochs on a GPU", ["gpu522_sgem_unet"])):
        row = _row(doc, marker)
        runs = [json.loads((fit / f"{n}.json").read_text())["weights"] for n in names]
        cells = [c.strip() for c in row.split("|")[2:5]]
        assert cells[0] == ", ".join(pct(w["model"]["iou"]) for w in runs), (marker, cells)
        raw = ", ".join(pct(w["train_model"]["iou"]) for w in runs if "train_model" in w) or "-"
        assert cells[1] == raw, (marker, cells)
        assert cells[2] == ", ".join(str(w["model"]["images_over_100_false_alarm_pixels"]) for w in runs), (marker, cells)
    flat = " ".join(doc.split())
    for model in ("sgem_unet", "unet"):
        last = _last_epoch("G", model, 0)
        assert f"**{pct(last['test/iou'])}** for `{model}`" in flat, model
    last = _last_epoch("L", "sgem_unet", 0)
    assert f"IoU **{pct(last['test/iou'])}** for `sgem_unet` (nIoU {pct(last['test/niou'])}, " \
           f"Pd {pct(last['test/pd'])} %, Fa {last['test/fa'] * 1e6:.1f}e-6)" in flat
    o = {m: _last_epoch("O", m, 0) for m in ("sgem_unet", "unet")}
    assert f"IoU **{pct(o['sgem_unet']['test/iou'])}**, nIoU {pct(o['sgem_unet']['test/niou'])}, " \
           f"F1 {pct(o['sgem_unet']['test/f1'])}, Pd {pct(o['sgem_unet']['test/pd'])} %, " \
           f"Fa {o['sgem_unet']['test/fa'] * 1e6:.1f}e-6" in flat
    assert f"test IoU {pct(o['unet']['test/iou'])} (nIoU {pct(o['unet']['test/niou'])}, F1 {pct(o['unet']['test/f1'])}, " \
           f"Pd {pct(o['unet']['test/pd'])} %, Fa {o['unet']['test/fa'] * 1e6:.1f}e-6), " \
           f"{100 * (o['sgem_unet']['test/iou'] - o['unet']['test/iou']):.2f} points below" in flat
    u1 = _last_epoch("O", "unet", 1)
    assert u1["epoch"] == 100 and f"IoU **{pct(u1['test/iou'])}** (nIoU {pct(u1['test/niou'])}, Pd {pct(u1['test/pd'])} %, " \
                                  f"Fa {u1['test/fa'] * 1e6:.1f}e-6)" in flat
    assert f"`unet` averages {50 * (o['unet']['test/iou'] + u1['test/iou']):.2f}" in flat
    s1 = _last_epoch("O", "sgem_unet", 1)
    assert f"IoU **{pct(s1['test/iou'])}**, nIoU {pct(s1['test/niou'])}, F1 {pct(s1['test/f1'])}, " \
           f"Pd {pct(s1['test/pd'])} %, Fa {s1['test/fa'] * 1e6:.1f}e-6, " \
           f"{100 * (o['sgem_unet']['test/iou'] - s1['test/iou']):.2f} points below seed 0 " \
           f"(mean of the two seeds {50 * (o['sgem_unet']['test/iou'] + s1['test/iou']):.2f}" in flat
    assert s1["epoch"] == 100
    q = [_last_epoch("Q", "sgem_unet", s) for s in (0, 1)]
    assert q[0]["epoch"] == q[1]["epoch"] == 100
    assert f"IoU **{pct(q[0]['test/iou'])}** (seed 0) and **{pct(q[1]['test/iou'])}** (seed 1), " \
           f"{100 * (q[0]['test/iou'] - q[1]['test/iou']):.2f} points apart" in flat
    p0 = _last_epoch("P", "sgem_unet", 0)
    assert p0["epoch"] == 100 and f"test IoU **{pct(p0['test/iou'])}**." in flat
    p1 = _last_epoch("P", "sgem_unet", 1)
    assert p1["epoch"] == 100 and f"IoU **{pct(p1['test/iou'])}** (seed 1; with the recalibration " \
                                  f"{pct(s1['test/iou'])})" in flat
    r = [_last_epoch("R", "sgem_unet", s) for s in (0, 1)]
    assert r[0]["epoch"] == r[1]["epoch"] == 100
    quoted = [f"**{pct(x['test/iou'])}** (seed {s}; nIoU {pct(x['test/niou'])}, Pd {pct(x['test/pd'])} %, "
              f"Fa {x['test/fa'] * 1e6:.1f}e-6)" for s, x in enumerate(r)]
    assert f"IoU {quoted[0]} and {quoted[1]}, mean {50 * (r[0]['test/iou'] + r[1]['test/iou']):.2f}" in flat


def _last_epoch(protocol: str, model: str, seed: int) -> dict:
    """The last history row (with its test keys) of an official-split pilot run."""
    path = REPO / "reports" / "cpu_pilots" / f"{protocol}_official" / f"{model}_s{seed}_history.json"
    return json.loads(path.read_text())[-1]


def _pilot_script(name: str):
    """A script of reports/cpu_pilots/, imported as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "reports" / "cpu_pilots" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_check_against_test_table_comes_from_its_files():
    """reports/cpu_pilots/fit_vs_test.md is what its script computes from the fit checks and test rows."""
    module = _pilot_script("fit_vs_test")
    rows = module.rows()
    assert len(rows) == 15 and {r["protocol"] for r in rows} == {"B", "G", "L", "O", "R", "S"}
    table = module.markdown(rows)
    assert (REPO / "reports" / "cpu_pilots" / "fit_vs_test.md").read_text() == table
    rho = re.search(r"over the 15 runs: (\d\.\d{3})", table).group(1)
    for doc in (REPO / "docs" / "training.md", REPO / "reports" / "cpu_pilots" / "README.md"):
        assert f"Spearman {rho}" in " ".join(doc.read_text().split()), doc


def test_two_seed_gate_takes_its_bar_from_b_and_judges_o_as_written():
    """The rule for the next candidate: both seeds free of images over 100 false-alarm pixels
    and a mean fit strictly above B's (so B itself does not pass its own bar); O fails on both."""
    gate = _pilot_script("two_seed_gate")
    bar = gate.bar()
    assert f"({100 * bar:.2f})" in " ".join((REPO / "reports" / "cpu_pilots" / "README.md").read_text().split())
    b, o = gate.judge("B", bar), gate.judge("O", bar)
    assert b["over"] == [0, 0] and abs(b["mean"] - bar) < 1e-12 and not b["passes"]
    assert o["over"] == [1, 3] and not o["passes"]
    r = gate.judge("R", bar)
    assert r["over"] == [2, 0] and r["mean"] > bar and not r["passes"]   # a mean above the bar does not outweigh a seed over
    s = gate.judge("S", bar)
    assert s["over"] == [0, 0] and s["mean"] > bar and s["passes"]     # the adopted protocol (params.cpu.yaml)


def _absolute_paths(obj, where=()):
    """(key path, value) of every string in a JSON document that is an absolute file path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _absolute_paths(v, (*where, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _absolute_paths(v, (*where, i))
    elif isinstance(obj, str) and re.match(r"^/[\w.-]+/", obj):
        yield where, obj


def test_committed_reports_record_paths_relative_to_the_repository():
    """A report records where its inputs were as a reader's clone names them (runs/..., data/...),
    never the folders of the machine that made it."""
    from conftest import tracked_files
    bad = [(f, hit) for f in tracked_files("reports/*.json") for hit in _absolute_paths(json.loads((REPO / f).read_text()))]
    assert not bad, bad[:5]


def test_cpu_profile_timing_on_the_epyc_comes_from_its_measurement():
    hist = json.loads((REPO / "reports" / "cpu_pilots" / "epyc_bf16_timing_history.json").read_text())
    crop = next(r for r in hist if r["epoch"] == 2)    # epoch 1 holds the warm-up of the kernels
    full = next(r for r in hist if r["train/crop"] == 256)
    assert crop["train/crop"] == 128
    quote = f"{crop['train/seconds']:.0f} s per crop epoch and {full['train/seconds']:.0f} s per full-size epoch"
    minutes = (60 * round(crop["train/seconds"]) + 12 * round(full["train/seconds"])) / 60 + 3
    for doc in ("docs/training.md", "reports/cpu/README.md"):
        text = " ".join((REPO / doc).read_text().split())
        assert quote in text and f"~{minutes:.0f} minutes" in text.replace("**", ""), doc


def test_cpu_reports_quote_the_third_seed_from_its_history():
    runs = REPO / "reports" / "cpu_pilots" / "S_official"
    iou = [json.loads((runs / f"sgem_unet_s{s}_history.json").read_text())[-1]["test/iou"] for s in (0, 1, 2)]
    mean, spread = pct(sum(iou) / 3), pct(max(iou) - min(iou))
    for path in (CPU / "README.md", REPO / "reports" / "cpu_pilots" / "README.md"):
        text = " ".join(path.read_text().split())
        assert pct(iou[2]) in text and f"{mean}, range {spread}" in text, path

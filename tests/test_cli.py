import json
import subprocess
import sys

from sgem.cli import main


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "sgem_unet" in out and "unet" in out


def test_profile_json(capsys):
    assert main(["profile", "unet", "--size", "32", "--runs", "2", "--warmup", "0", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["model"] == "unet" and r["input_shape"] == [1, 1, 32, 32]
    assert {"params", "macs_module", "macs_full", "latency_ms", "fps", "environment"} <= set(r)


def test_profile_text_names_the_convention(capsys):
    assert main(["profile", "unet", "--size", "32", "--no-timing"]) == 0
    out = capsys.readouterr().out
    assert "paper convention" in out and "latency" not in out


def test_errors_exit_2_with_message(capsys):
    assert main(["profile", "nope", "--no-timing"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["profile", "unet", "--size", "250", "--no-timing"]) == 2
    assert "multiples of 16" in capsys.readouterr().err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "sgem", "models"], capture_output=True, text=True, check=True)
    assert "sgem_unet" in out.stdout


def test_profile_out_writes_json_with_command(tmp_path, capsys):
    out = tmp_path / "sub" / "p.json"
    assert main(["profile", "unet", "--size", "32", "--no-timing", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["command"].startswith("sgem profile unet --size 32")
    assert not list(out.parent.glob(".*.tmp"))

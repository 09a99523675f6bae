import pytest

from sgem.io import atomic_write, atomic_write_json


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"a": 1})

    def boom(fh):
        fh.write("partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = atomic_write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_parts_split_and_rejoin_to_identical_bytes(tmp_path):
    import json

    import pytest

    from sgem.io import join_parts, split_into_parts

    data = bytes(range(256)) * 1000 + b"tail"
    src = tmp_path / "w.pt"
    src.write_bytes(data)
    manifest = split_into_parts(src, 100_000)
    parts = json.loads(manifest.read_text())["parts"]
    assert len(parts) == 3 and all(p["bytes"] <= 100_000 for p in parts)
    out = join_parts(manifest, tmp_path / "joined.pt")
    assert out.read_bytes() == data
    # a damaged or missing part is named and nothing is written
    good = (tmp_path / parts[1]["file"]).read_bytes()
    (tmp_path / parts[1]["file"]).write_bytes(b"x" * parts[1]["bytes"])
    with pytest.raises(ValueError, match=r"w\.pt\.part01: part damaged"):
        join_parts(manifest, tmp_path / "again.pt")
    (tmp_path / parts[1]["file"]).write_bytes(good)
    (tmp_path / parts[2]["file"]).unlink()
    with pytest.raises(FileNotFoundError, match="part02: part missing"):
        join_parts(manifest, tmp_path / "again.pt")
    assert not (tmp_path / "again.pt").exists()


def test_join_cli_refuses_a_file_that_is_not_a_manifest(tmp_path, capsys):
    from sgem.cli import main

    bad = tmp_path / "x.parts.json"
    bad.write_text("{}")
    assert main(["join", str(bad)]) == 2
    assert "not a parts manifest" in capsys.readouterr().err


def test_split_cli_parts_any_file_for_join(tmp_path, capsys):
    import json

    from sgem.cli import main

    src = tmp_path / "checkpoint.pt"
    src.write_bytes(bytes(range(256)) * 9000)          # 2.2 MiB
    assert main(["split", str(src), "--part-mb", "1"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["parts"] == 3 and said["parts_manifest"].endswith("checkpoint.pt.parts.json")
    assert main(["join", said["parts_manifest"], "--out", str(tmp_path / "back.pt")]) == 0
    assert (tmp_path / "back.pt").read_bytes() == src.read_bytes()
    assert main(["split", str(tmp_path / "none.pt"), "--part-mb", "1"]) == 2
    assert "none.pt: no such file to split" in capsys.readouterr().err
    assert main(["split", str(src), "--part-mb", "0"]) == 2
    assert "--part-mb must be > 0, got 0.0" in capsys.readouterr().err

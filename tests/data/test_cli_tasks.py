"""`ldp tasks`: JSON and table output, counts from the mirror."""

from __future__ import annotations

import json

from ldp.cli.main import main
from ldp.data.tasks import all_tasks


def test_tasks_json(data_dir, capsys):
    assert main(["tasks", "--json", "--data-dir", str(data_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data_dir"] == str(data_dir)
    rows = {row["key"]: row for row in out["tasks"]}
    assert list(rows) == [t.name for t in all_tasks()]
    assert rows["sst2"]["counts"] == {"train": 2000, "validation": 300, "test": None}
    assert rows["cnndm"]["counts"] == {"train": 60, "validation": 20, "test": None}
    assert rows["triviaqa"]["counts"] == {"train": None, "validation": None, "test": None}
    assert rows["squad"]["metrics"] == ["f1", "exact_match"]
    assert rows["wikibio"]["hub_splits"]["validation"] == "val"
    assert rows["wmt14_en_fr"]["dataset"] == "wmt/wmt14" and rows["wmt14_en_fr"]["config"] == "fr-en"


def test_tasks_json_without_a_mirror(capsys):
    assert main(["tasks", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["data_dir"] is None and all(row["counts"] is None for row in out["tasks"])


def test_tasks_table_uses_ldp_data_dir(data_dir, capsys, monkeypatch):
    monkeypatch.setenv("LDP_DATA_DIR", str(data_dir))
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    cells = {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split("│")[1:-1]]
        if parts and parts[0]:
            cells[parts[0]] = parts
    assert cells["triviaqa"][-3:] == ["-", "-", "-"]
    assert cells["sst2"][-3:] == ["2000", "300", "-"]
    assert cells["sst2"][3] == "accuracy, macro_f1" and cells["squad"][3] == "f1, exact_match"


def test_tasks_bad_data_dir_is_one_line(tmp_path, capsys):
    # a folder that does not exist is bad usage, found before anything is read
    assert main(["tasks", "--data-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ldp: error: --data-dir: no such folder") and err.count("\n") == 1

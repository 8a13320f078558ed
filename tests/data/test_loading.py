"""Loading task splits: the local mirror, an s3:// mirror (moto), and the hub code path."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ldp.data.loading import count_rows, load_examples, load_split, mirror_file
from ldp.data.tasks import get_task, task_names
from ldp.errors import NotFoundError, UsageError

LOCAL_TASKS = [name for name in task_names() if name != "triviaqa"]


def _rows(path, limit=None):
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line))
            if limit is not None and len(out) == limit:
                break
    return out


def test_the_mirror_has_exactly_the_expected_tasks(data_dir):
    present = {name for name in task_names() if (data_dir / name).is_dir()}
    assert present == set(LOCAL_TASKS)


@pytest.mark.parametrize("name", LOCAL_TASKS)
def test_every_local_task_loads_raw_rows(data_dir, name):
    ds = load_split(name, "validation", data_dir, limit=5)
    expected = _rows(data_dir / name / "validation.jsonl", limit=5)
    assert len(ds) == 5
    assert ds[0] == expected[0] and ds[4] == expected[4]  # hub field names, nested as in the file
    assert count_rows(name, "train", data_dir) == len(_rows(data_dir / name / "train.jsonl"))


def test_ldp_data_dir_is_the_default_source(data_dir, monkeypatch):
    monkeypatch.setenv("LDP_DATA_DIR", str(data_dir))
    assert len(load_split("cnndm", "validation")) == 20


def test_triviaqa_fails_with_one_clear_line_naming_the_folder(data_dir):
    with pytest.raises(NotFoundError) as info:
        load_split("triviaqa", "train", data_dir)
    message = str(info.value)
    assert "\n" not in message
    assert "no train data for task triviaqa" in message
    assert str(data_dir / "triviaqa" / "train.jsonl") in message
    assert count_rows("triviaqa", "train", data_dir) is None


def test_missing_split_and_missing_dir(data_dir, tmp_path):
    with pytest.raises(NotFoundError, match=r"no test data for task sst2 .*sst2/test\.jsonl"):
        load_split("sst2", "test", data_dir)
    with pytest.raises(NotFoundError, match="does not exist"):
        load_split("sst2", "train", tmp_path / "nowhere")
    with pytest.raises(UsageError, match="unknown split 'dev'"):
        load_split("sst2", "dev", data_dir)
    with pytest.raises(UsageError, match="limit must be >= 0"):
        load_split("sst2", "train", data_dir, limit=-1)


def test_parquet_mirror_files_are_read(data_dir, tmp_path):
    import datasets

    rows = _rows(data_dir / "wikibio" / "validation.jsonl", limit=7)
    (tmp_path / "wikibio").mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "wikibio" / "validation.parquet"))
    assert mirror_file("wikibio", "validation", tmp_path).endswith("validation.parquet")
    assert count_rows("wikibio", "validation", tmp_path) == 7
    ds = load_split("wikibio", "validation", tmp_path)
    assert [get_task("wikibio").to_example(r).prompt for r in ds] == [
        get_task("wikibio").to_example(r).prompt for r in rows
    ]


def test_load_examples_pools_commongen_references(data_dir):
    rows = _rows(data_dir / "commongen" / "validation.jsonl")
    all_rows = load_examples("commongen", "validation", data_dir)
    unique = load_examples("commongen", "validation", data_dir, unique_groups=True)
    assert len(all_rows) == len(rows)
    groups: dict[int, list[str]] = {}
    for row in rows:
        refs = groups.setdefault(row["concept_set_idx"], [])
        if row["target"].strip() not in refs:  # a few references repeat; pooled once, stripped
            refs.append(row["target"].strip())
    assert len(unique) == len(groups)
    assert [ex.references for ex in unique] == list(groups.values())
    assert all_rows[1].references == all_rows[0].references == groups[rows[0]["concept_set_idx"]]
    assert all_rows[1].target == rows[1]["target"]  # training target stays the row's own


# -- the hub code path -------------------------------------------------------------------------


def _hub_repo(root, config, files):
    """A folder laid out like a hub dataset repo: README with `configs`, parquet files."""
    import datasets

    name = config or "default"
    lines = ["---", "configs:", f"- config_name: {name}", "  data_files:"]
    for split, rows in files.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows).to_parquet(str(root / name / f"{split}-00000-of-00001.parquet"))
        lines += [f"  - split: {split}", f"    path: {name}/{split}-*"]
    (root / "README.md").write_text("\n".join(lines + ["---", ""]))
    return root


def test_hub_path_maps_split_names_and_config(data_dir, tmp_path):
    train = _rows(data_dir / "wikibio" / "train.jsonl", limit=6)
    val = _rows(data_dir / "wikibio" / "validation.jsonl", limit=4)
    repo = _hub_repo(tmp_path / "wiki_bio", None, {"train": train, "val": val, "test": val[:2]})
    spec = dataclasses.replace(get_task("wikibio"), dataset=str(repo))
    ds = load_split(spec, "validation", "hub", cache_dir=tmp_path / "hf")  # our name -> hub's "val"
    assert [r["target_text"] for r in ds] == [r["target_text"] for r in val]
    assert ds[0] == val[0]

    pairs = _rows(data_dir / "wmt14_en_de" / "validation.jsonl", limit=8)
    repo = _hub_repo(tmp_path / "wmt14", "de-en", {"train": pairs, "validation": pairs[:3], "test": pairs[3:]})
    spec = dataclasses.replace(get_task("wmt14_en_de"), dataset=str(repo))
    examples = load_examples(spec, "test", None, cache_dir=tmp_path / "hf")  # no mirror set -> hub
    assert [ex.target for ex in examples] == [p["translation"]["de"] for p in pairs[3:]]
    wrong_config = dataclasses.replace(spec, config="fr-en")
    with pytest.raises(NotFoundError, match=r"could not load task wmt14_en_de split test from the hub .*fr-en"):
        load_split(wrong_config, "test", "hub", cache_dir=tmp_path / "hf")


def test_hub_path_applies_split_slices(data_dir, tmp_path):
    rows = _rows(data_dir / "sst2" / "validation.jsonl", limit=10)
    repo = _hub_repo(tmp_path / "sst2", None, {"train": rows, "validation": rows})
    spec = dataclasses.replace(get_task("sst2"), dataset=str(repo))
    val = load_split(spec, "validation", "hub", cache_dir=tmp_path / "hf")
    test = load_split(spec, "test", "hub", cache_dir=tmp_path / "hf", limit=3)
    assert [r["idx"] for r in val] == [r["idx"] for r in rows[:5]]  # validation[:50%]
    assert [r["idx"] for r in test] == [r["idx"] for r in rows[5:8]]  # validation[50%:], limit 3


def test_hub_failure_is_a_not_found_error(monkeypatch):
    with pytest.raises(NotFoundError) as info:
        load_split("triviaqa", "train", "hub")  # offline in tests
    assert "mandarjoshi/trivia_qa (rc.nocontext)" in str(info.value)
    assert "\n" not in str(info.value)


# -- s3 mirror -----------------------------------------------------------------------------------


def test_s3_mirror_through_fsspec(data_dir, s3_endpoint, monkeypatch, tmp_path):
    import s3fs

    monkeypatch.setenv("LDP_S3_ENDPOINT_URL", s3_endpoint)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("mirror")
    fs.put(str(data_dir / "gsm8k" / "validation.jsonl"), "mirror/data/gsm8k/validation.jsonl")
    fs.invalidate_cache()

    url = "s3://mirror/data"
    assert count_rows("gsm8k", "validation", url) == 300
    assert count_rows("gsm8k", "train", url) is None
    ds = load_split("gsm8k", "validation", url, limit=4)
    assert list(ds) == _rows(data_dir / "gsm8k" / "validation.jsonl", limit=4)
    with pytest.raises(NotFoundError, match=r"s3://mirror/data/gsm8k/train\.jsonl"):
        load_split("gsm8k", "train", url)

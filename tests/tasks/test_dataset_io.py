import json

import datasets
import pytest

from oversight.tasks import (
    MalformedRowError,
    Problem,
    from_dataset,
    get_task,
    load_dataset,
    load_problems,
    problem_to_record,
    save_problems,
    to_dataset,
)


def _split():
    """A mixed split: every built-in task, two difficulties."""
    out = []
    for name in ("arithmetic", "addition", "sorting", "sat", "code"):
        for d in (1, 2):
            out += get_task(name).sample(3, d, seed=5)
    return out


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_split_round_trips_through_file_and_datasets_unchanged(tmp_path, suffix):
    problems = _split()
    path = save_problems(problems, tmp_path / f"split{suffix}")
    assert load_problems(path) == problems
    # through the `datasets` library's own loaders, as a researcher would read a shared file
    builder = "json" if suffix == ".jsonl" else "parquet"
    raw = datasets.load_dataset(
        builder, data_files=str(path), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert from_dataset(raw) == problems
    assert from_dataset(load_dataset(path, cache_dir=tmp_path / "cache2")) == problems


def test_dataset_object_round_trips_unchanged():
    problems = _split()
    ds = to_dataset(problems)
    assert ds.num_rows == len(problems)
    assert ds.column_names == ["task", "id", "difficulty", "prompt", "solution", "data"]
    assert from_dataset(ds) == problems


def test_hand_written_row_in_the_schema_loads(tmp_path):
    row = {
        "task": "addition",
        "id": "mine-1",
        "difficulty": 1,
        "prompt": "2+2=",
        "solution": "4",
        "data": json.dumps({"a": 2, "b": 2}),
    }
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(row) + "\n\n")  # a blank line is allowed
    (p,) = load_problems(path)
    assert p == Problem("addition", "mine-1", 1, "2+2=", "4", {"a": 2, "b": 2})
    assert get_task("addition").check(p, "4").correct


def _write_with_bad_line(tmp_path, bad_line):
    good = [json.dumps(problem_to_record(p)) for p in get_task("addition").sample(4, 1, seed=0)]
    path = tmp_path / "split.jsonl"
    path.write_text("\n".join(good[:2] + [bad_line] + good[2:]) + "\n")
    return path


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"task": "addition", "id": ', "not valid JSON"),
        ('["not", "an", "object"]', "expected an object"),
        ('{"task": "addition", "id": "x"}', "missing field"),
        (
            '{"task": "nope", "id": "x", "difficulty": 1, "prompt": "", "solution": "", "data": "{}"}',
            "unknown task",
        ),
        (
            '{"task": "addition", "id": "x", "difficulty": "1", "prompt": "", "solution": "4", "data": "{}"}',
            "difficulty",
        ),
        (
            '{"task": "addition", "id": "x", "difficulty": 1, "prompt": "", "solution": "4",'
            ' "data": "{oops"}',
            "not valid JSON",
        ),
        (
            '{"task": "addition", "id": "x", "difficulty": 1, "prompt": "", "solution": "4", "data": "{}"}',
            "bad 'data'",
        ),
        (
            '{"task": "addition", "id": "x", "difficulty": 1, "prompt": "2+2=", "solution": "5",'
            ' "data": "{\\"a\\": 2, \\"b\\": 2}"}',
            "fails the gold checker",
        ),
        (
            '{"task": "addition", "id": "x", "difficulty": 1, "prompt": "", "solution": "4", "data": "{}",'
            ' "x": 1}',
            "unknown field",
        ),
    ],
)
def test_malformed_jsonl_row_is_reported_with_file_and_line(tmp_path, bad_line, message):
    path = _write_with_bad_line(tmp_path, bad_line)
    with pytest.raises(MalformedRowError, match=message) as info:
        load_problems(path)
    assert info.value.line == 3 and info.value.path == str(path)
    assert str(info.value).startswith(f"{path}:3: ")


def test_non_utf8_jsonl_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "split.jsonl"
    good = json.dumps(problem_to_record(get_task("addition").sample(1, 1, seed=0)[0]))
    path.write_bytes((good + "\n").encode() + b"\xff\xfe\n")
    with pytest.raises(MalformedRowError) as info:
        load_problems(path)
    assert info.value.line == 2


def test_corrupt_parquet_is_reported_with_the_file(tmp_path):
    path = tmp_path / "split.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(MalformedRowError, match="not a readable Parquet file") as info:
        load_problems(path)
    assert info.value.path == str(path)


def test_bad_parquet_row_is_reported_with_its_1_based_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [problem_to_record(p) for p in get_task("sorting").sample(3, 1, seed=0)]
    rows[1]["solution"] = "not sorted at all"
    path = tmp_path / "split.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(MalformedRowError, match="fails the gold checker") as info:
        load_problems(path)
    assert info.value.line == 2 and str(info.value).startswith(f"{path}:2: ")


def test_load_dataset_validates_before_datasets_reads(tmp_path):
    path = _write_with_bad_line(tmp_path, "{broken")
    with pytest.raises(MalformedRowError, match=":3: "):
        load_dataset(path, cache_dir=tmp_path / "cache")


def test_unknown_suffix_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="use .jsonl or .parquet"):
        save_problems(_split()[:1], tmp_path / "split.csv")

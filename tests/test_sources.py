"""Text sources: parquet/txt/jsonl row groups, splits, iter_texts caps, bad files, the offline corpus."""

import argparse
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat_pl.common import UserError
from nanochat_pl.sources import offline
from nanochat_pl.sources.shards import (
    DATASETS,
    iter_texts,
    num_row_groups,
    read_row_group,
    resolve_shards,
    split_shards,
)

# large enough for several hundred stdlib documents, small enough to build in about a second
OFFLINE_TEST_CHARS = 400_000


def write_parquet(path, texts, row_group_size=1024):
    pq.write_table(pa.table({"text": texts}), path, row_group_size=row_group_size, compression="zstd")
    return path


def docs(n, prefix="doc"):
    return [f"{prefix} {i}: " + "word " * (i % 7) for i in range(n)]


def test_parquet_row_groups_read_back_as_written(tmp_path):
    texts = docs(10)
    path = write_parquet(tmp_path / "a.parquet", texts, row_group_size=3)
    assert num_row_groups(path) == 4 == pq.ParquetFile(path).metadata.num_row_groups
    assert [read_row_group(path, i) for i in range(4)] == [texts[0:3], texts[3:6], texts[6:9], texts[9:]]


def test_parquet_null_texts_are_skipped(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", ["one", None, "three"])
    assert read_row_group(path, 0) == ["one", "three"]


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nsame doc\n\nsecond\n \t\nthird\n\n\n\nfourth  \n")
    assert num_row_groups(path) == 1
    assert read_row_group(path, 0) == ["first line\nsame doc", "second", "third", "fourth"]


def test_txt_and_jsonl_groups_hold_1024_documents(tmp_path):
    texts = docs(2500)
    txt = tmp_path / "a.txt"
    txt.write_text("\n\n".join(texts))
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)) + "\n\n")
    for path, expected in ((txt, [t.strip() for t in texts]), (jsonl, texts)):
        groups = [read_row_group(path, i) for i in range(num_row_groups(path))]
        assert [len(g) for g in groups] == [1024, 1024, 452]
        assert sum(groups, []) == expected


def test_jsonl_keeps_text_exactly(tmp_path):
    texts = ["  leading spaces", "two\n\nparagraphs", "unicode ✓ 字"]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    assert read_row_group(path, 0) == texts


def test_changed_text_file_is_read_again(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    assert read_row_group(path, 0) == ["old"]
    path.write_text("new text\n\nand more")
    assert read_row_group(path, 0) == ["new text", "and more"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.jsonl", '{"text": "ok"}\nnot json\n', "bad.jsonl:2: invalid JSON"),
        ("bad.jsonl", '{"body": "no text"}\n', 'bad.jsonl:1: expected an object with a string "text"'),
        ("bad.txt", b"\xff\xfe latin", "bad.txt: not UTF-8"),
    ],
)
def test_bad_text_files_raise_user_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=message):
        num_row_groups(path)


def test_corrupt_parquet_raises_user_error_naming_the_file(tmp_path):
    good = write_parquet(tmp_path / "good.parquet", docs(50))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"this is not parquet at all" * 10)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:-100])
    for path in (garbage, truncated):
        with pytest.raises(UserError, match=str(path)):
            num_row_groups(path)
        with pytest.raises(UserError, match=str(path)):
            read_row_group(path, 0)


def test_parquet_without_a_text_column_is_rejected(tmp_path):
    no_text = tmp_path / "no_text.parquet"
    pq.write_table(pa.table({"content": ["a"]}), no_text)
    with pytest.raises(UserError, match=r"no_text.parquet: its 'text' column is missing.*content"):
        num_row_groups(no_text)
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    with pytest.raises(UserError, match=r"numbers.parquet: its 'text' column holds int64"):
        read_row_group(numbers, 0)


def test_resolve_directory_glob_and_file(tmp_path):
    write_parquet(tmp_path / "b.parquet", ["b"])
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "c.jsonl").write_text('{"text": "c"}')
    (tmp_path / "notes.md").write_text("not a source")
    (tmp_path / ".hidden.txt").write_text("partial download")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.txt").write_text("d")
    expected = [tmp_path / "a.txt", tmp_path / "b.parquet", tmp_path / "c.jsonl"]
    assert resolve_shards(str(tmp_path)) == expected
    assert resolve_shards(str(tmp_path / "*.*")) == expected
    assert resolve_shards(str(tmp_path / "**" / "*.txt")) == [tmp_path / "a.txt", tmp_path / "sub" / "d.txt"]
    assert resolve_shards(str(tmp_path / "a.txt")) == [tmp_path / "a.txt"]
    with pytest.raises(UserError, match="unsupported file type"):
        resolve_shards(str(tmp_path / "notes.md"))
    with pytest.raises(UserError, match="no .parquet, .txt, .jsonl files"):
        resolve_shards(str(tmp_path / "missing" / "*.txt"))


@pytest.mark.parametrize(
    "source, directory, val_shard, title, command",
    [
        ("fineweb", "fineweb-edu", 1822, "FineWeb-Edu", "nanochat-pl data download -n 8 --dataset fineweb-edu"),
        ("climbmix", "climbmix", 6542, "ClimbMix", "nanochat-pl data download -n 8 --dataset climbmix"),
    ],
)
def test_downloaded_sources_need_their_shards_with_the_val_shard(
    tmp_path, monkeypatch, source, directory, val_shard, title, command
):
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(tmp_path))
    data_dir = tmp_path / "data" / directory
    assert DATASETS[directory].default_dir() == data_dir
    with pytest.raises(UserError) as error:
        resolve_shards(source)
    assert str(error.value) == f"no {title} shards in {data_dir}: run `{command}` first"
    data_dir.mkdir(parents=True)
    for i in (1, 0):
        write_parquet(data_dir / f"shard_{i:05d}.parquet", [f"train {i}"])
    with pytest.raises(UserError, match=f"shard_{val_shard:05d}.parquet is missing") as error:
        resolve_shards(source)
    assert str(error.value).endswith(f"run `{command.replace(' -n 8', '')}`")
    write_parquet(data_dir / f"shard_{val_shard:05d}.parquet", ["val"])
    shards = resolve_shards(source)
    assert [p.name for p in shards] == ["shard_00000.parquet", "shard_00001.parquet", f"shard_{val_shard:05d}.parquet"]
    assert list(iter_texts(source, "val")) == ["val"]
    assert list(iter_texts(source, "train")) == ["train 0", "train 1"]


def test_split_shards(tmp_path):
    paths = [tmp_path / f"{i}.txt" for i in range(3)]
    assert split_shards(paths, "train") == paths[:2]
    assert split_shards(paths, "val") == paths[2:]
    assert split_shards(paths[:1], "train") == paths[:1]  # one file: training data, no validation
    with pytest.raises(UserError, match="at least 2 files"):
        split_shards(paths[:1], "val")


def test_iter_texts_caps_documents_and_total(tmp_path):
    texts = [f"{i:03d}" + "x" * 20 for i in range(30)]
    write_parquet(tmp_path / "0.parquet", texts[:20], row_group_size=7)
    (tmp_path / "1.txt").write_text("\n\n".join(texts[20:]))
    (tmp_path / "2.txt").write_text("validation doc")
    assert list(iter_texts(str(tmp_path))) == texts
    assert list(iter_texts(str(tmp_path), "val")) == ["validation doc"]
    assert list(iter_texts(str(tmp_path), doc_cap=5)) == [t[:5] for t in texts]
    # the total is exactly max_chars: the document that reaches it is cut
    capped = list(iter_texts(str(tmp_path), max_chars=100, doc_cap=15))
    assert sum(map(len, capped)) == 100 and capped == [t[:15] for t in texts[:6]] + [texts[6][:10]]
    assert "".join(iter_texts(str(tmp_path), max_chars=10**9)) == "".join(texts)
    with pytest.raises(UserError, match="max_chars must be positive"):
        next(iter_texts(str(tmp_path), max_chars=0))


@pytest.fixture(scope="session")
def offline_home(tmp_path_factory):
    """A data home holding an offline corpus built once for the whole test session, with a size cap."""
    home = tmp_path_factory.mktemp("home")
    offline.build_offline_corpus(home / "data" / "offline", max_chars=OFFLINE_TEST_CHARS)
    return home


def read_all(paths):
    return [text for path in paths for i in range(num_row_groups(path)) for text in read_row_group(path, i)]


def test_offline_corpus_is_real_text_in_the_fineweb_format(offline_home, monkeypatch):
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(offline_home))
    shards = resolve_shards("offline")  # the cached corpus: nothing is rebuilt
    manifest = json.loads((offline_home / "data" / "offline" / "manifest.json").read_text())
    assert [p.name for p in shards] == manifest["shards"] and len(shards) >= 2
    texts = read_all(shards)
    assert len(texts) == manifest["documents"] == len(set(texts)) > 100
    assert sum(map(len, texts)) == manifest["chars"] >= OFFLINE_TEST_CHARS
    # real English prose: the commonest words are there, at prose-like rates
    words = " ".join(texts).lower().split()
    for word in ("the", "a", "of", "to", "is", "return"):
        assert words.count(word) > len(words) / 1000, word
    # the standard library's own documentation, read independently through the imported module
    assert any(argparse.__doc__.strip() in text for text in texts)
    for path in shards:
        meta = pq.ParquetFile(path).metadata
        assert pq.ParquetFile(path).schema_arrow.names == ["text"]
        assert all(meta.row_group(i).num_rows <= 1024 for i in range(meta.num_row_groups))
        assert meta.row_group(0).column(0).compression == "ZSTD"
    val = list(iter_texts("offline", "val"))
    assert val == read_all(shards[-1:]) and not set(val) & set(read_all(shards[:-1]))


def test_offline_corpus_is_deterministic_and_replaces_a_half_built_one(offline_home, tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "DEFAULT_MAX_CHARS", OFFLINE_TEST_CHARS)
    out_dir = tmp_path / "offline"
    out_dir.mkdir()
    (out_dir / "shard_00000.parquet").write_bytes(b"left by a crash")  # no manifest: not a corpus
    rebuilt = offline.offline_shards(out_dir)
    cached = resolve_shards("offline", data_dir=offline_home / "data" / "offline")
    assert read_all(rebuilt) == read_all(cached)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offline"]  # no temporary directory left

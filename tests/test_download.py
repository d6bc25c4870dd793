"""Downloads against a local HTTP server: FineWeb-Edu and ClimbMix shards in the real format and single files,
failures on demand."""

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tqdm import tqdm

from nanochat_pl.commands.data import download
from nanochat_pl.common import UserError
from nanochat_pl.data.pretrain_data import PretrainDataModule
from nanochat_pl.sources.download import download_file, download_shards
from nanochat_pl.sources.shards import DATASETS, iter_texts, resolve_shards, split_shards
from nanochat_pl.tokenizer import Tokenizer

FINEWEB_EDU, CLIMBMIX = DATASETS["fineweb-edu"], DATASETS["climbmix"]
SHARDS = (0, 1, 2, 1822, 6542)  # FineWeb-Edu's validation shard is 1822, ClimbMix's 6542


class ShardServer:
    """Serves `files` (name -> bytes) on 127.0.0.1; `plan[name]` lists how the next requests misbehave:
    "500", "404", "corrupt" (bytes that are not parquet) or "truncated" (connection closes mid-body)."""

    def __init__(self, files):
        self.files, self.plan, self.requests = files, {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                steps = server.plan.get(name, [])
                step = steps.pop(0) if steps else None
                body = server.files.get(name)
                if step in ("500", "404") or body is None:
                    self.send_error(int(step or 404))
                    return
                if step == "corrupt":
                    body = b"<html>rate limited</html>" * 40
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if step == "truncated" else body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/datasets"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def shard_bytes(tmp_path, index):
    """A small shard in the format of both datasets: one `text` column, row groups of 1024, zstd."""
    path = tmp_path / f"src_{index}.parquet"
    texts = [f"shard {index} document {j}. " * (j % 5 + 1) for j in range(1500)]
    pq.write_table(pa.table({"text": texts}), path, row_group_size=1024, compression="zstd")
    return path.read_bytes()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("served")
    return {f"shard_{i:05d}.parquet": shard_bytes(tmp, i) for i in SHARDS}


@pytest.fixture
def server(files):
    server = ShardServer(files)
    yield server
    server.close()


def fetch(server, out_dir, num_shards, **kwargs):
    return download_shards(FINEWEB_EDU, num_shards, data_dir=out_dir, base_url=server.url, backoff_s=0.001, **kwargs)


def listing(out_dir):
    return sorted(p.name for p in out_dir.iterdir())


def test_downloads_n_shards_plus_val_then_skips_existing(server, files, tmp_path):
    out = tmp_path / "out"
    paths = fetch(server, out, 2)
    assert [p.name for p in paths] == ["shard_00000.parquet", "shard_00001.parquet", "shard_01822.parquet"]
    assert listing(out) == [p.name for p in paths]  # nothing else: no .tmp file
    assert all(p.read_bytes() == files[p.name] for p in paths)
    assert sorted(server.requests) == [p.name for p in paths]

    server.requests.clear()
    fetch(server, out, 3, workers=1)
    assert server.requests == ["shard_00002.parquet"]  # only what was missing
    assert (out / "shard_00002.parquet").read_bytes() == files["shard_00002.parquet"]


@pytest.mark.parametrize("failure", ["500", "corrupt", "truncated"])
def test_transient_failures_are_retried(server, files, tmp_path, failure):
    out = tmp_path / "out"
    server.plan["shard_00000.parquet"] = [failure, failure]
    fetch(server, out, 1)
    assert server.requests.count("shard_00000.parquet") == 3
    assert (out / "shard_00000.parquet").read_bytes() == files["shard_00000.parquet"]
    assert listing(out) == ["shard_00000.parquet", "shard_01822.parquet"]


def test_all_attempts_failing_is_one_clear_error(server, tmp_path):
    out = tmp_path / "out"
    server.plan["shard_00001.parquet"] = ["500"] * 5
    server.plan["shard_01822.parquet"] = ["corrupt"] * 3
    with pytest.raises(UserError) as error:
        fetch(server, out, 2, attempts=3)
    message = str(error.value)
    assert "2 of 3 shards failed" in message and "\n" not in message
    assert "could not download" in message and "after 3 attempts; last error:" in message
    # the shard that could be fetched is kept (a rerun resumes); nothing partial or corrupt is left
    assert listing(out) == ["shard_00000.parquet"]
    assert server.requests.count("shard_00001.parquet") == server.requests.count("shard_01822.parquet") == 3

    server.plan["shard_00001.parquet"] = ["500"] * 5
    url = re.escape(f"{server.url}/shard_00001.parquet")
    with pytest.raises(UserError, match=f"could not download {url} after 5 attempts; last error: HTTP Error 500"):
        fetch(server, out, 2)
    server.plan["shard_00001.parquet"] = ["corrupt"] * 5
    with pytest.raises(UserError, match="not a readable parquet file"):
        fetch(server, out, 2)
    assert listing(out) == ["shard_00000.parquet", "shard_01822.parquet"]


def test_missing_file_is_not_retried(server, tmp_path):
    server.plan["shard_00000.parquet"] = ["404"]
    with pytest.raises(UserError, match=r"shard_00000.parquet: HTTP 404"):
        fetch(server, tmp_path, 1)
    assert server.requests.count("shard_00000.parquet") == 1


def test_corrupt_shard_on_disk_is_fetched_again(server, files, tmp_path):
    (tmp_path / "shard_00000.parquet").write_bytes(b"half a file")
    fetch(server, tmp_path, 1)
    assert (tmp_path / "shard_00000.parquet").read_bytes() == files["shard_00000.parquet"]


@pytest.mark.parametrize(
    "dataset, num_shards", [(FINEWEB_EDU, 0), (FINEWEB_EDU, -2), (FINEWEB_EDU, 1823), (CLIMBMIX, 0), (CLIMBMIX, 6543)]
)
def test_number_of_shards_out_of_range(tmp_path, dataset, num_shards):
    with pytest.raises(UserError, match=rf"{dataset.title} shards must be 1\.\.{dataset.val_shard} or -1"):
        download_shards(dataset, num_shards, data_dir=tmp_path, base_url="http://127.0.0.1:9")


def test_command_uses_the_data_home_and_env_url(server, files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(tmp_path))
    monkeypatch.setenv("NANOCHAT_PL_DATA_URL", server.url + "/")
    download(num_shards=1)
    assert "2 FineWeb-Edu shards" in capsys.readouterr().err
    shards = resolve_shards("fineweb")
    assert shards == [
        tmp_path / "data" / "fineweb-edu" / name for name in ("shard_00000.parquet", "shard_01822.parquet")
    ]
    assert split_shards(shards, "train") == shards[:1]
    val = list(iter_texts("fineweb", "val"))
    assert len(val) == 1500 and val[0] == "shard 1822 document 0. "


def test_climbmix_downloads_into_its_own_directory_resumes_and_is_a_source(
    server, files, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(tmp_path))
    monkeypatch.setenv("NANOCHAT_PL_DATA_URL", server.url)
    download(num_shards=2, dataset="climbmix")
    assert "3 ClimbMix shards" in capsys.readouterr().err
    out = tmp_path / "data" / "climbmix"
    names = ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    assert listing(tmp_path / "data") == ["climbmix"] and listing(out) == names  # no .tmp file, no FineWeb-Edu
    assert sorted(server.requests) == names and all((out / n).read_bytes() == files[n] for n in names)

    server.requests.clear()
    download(num_shards=3, dataset="climbmix", workers=1)
    assert server.requests == ["shard_00002.parquet"]  # resumed: only what was missing
    shards = resolve_shards("climbmix")
    assert shards == [out / f"shard_{i:05d}.parquet" for i in (0, 1, 2, 6542)]  # training first, validation last
    assert split_shards(shards, "val") == [out / "shard_06542.parquet"]
    assert next(iter_texts("climbmix", "val")) == "shard 6542 document 0. "
    assert next(iter_texts("climbmix", "train")) == "shard 0 document 0. "

    # the pretraining stream reads them: training batches from shards 0..2, validation from shard 6542
    tokenizer = Tokenizer.train_from_iterator(iter_texts("climbmix", "train"), vocab_size=300)
    tokenizer.save(tmp_path / "tokenizer")
    dm = PretrainDataModule(
        source="climbmix",
        tokenizer_dir=str(tmp_path / "tokenizer"),
        sequence_len=64,
        device_batch_size=2,
        buffer_docs=8,
        val_tokens=128,
    )
    dm.setup("fit")
    inputs, targets = dm.on_before_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert inputs.shape == targets.shape == (2, 64)
    train_text = tokenizer.decode(inputs.flatten().tolist())
    assert "shard 0 document" in train_text and "6542" not in train_text
    val_batches = list(dm.val_dataloader())
    assert len(val_batches) == 1
    val_text = tokenizer.decode(val_batches[0][0].flatten().tolist())
    assert "shard 6542 document" in val_text and "shard 0 " not in val_text


def test_unknown_dataset_is_one_line_naming_the_known_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_PL_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"^unknown dataset 'fineweb'; one of fineweb-edu, climbmix$"):
        download(dataset="fineweb")
    assert not (tmp_path / "data").exists()


def test_single_file_download_shares_the_retries_and_the_check(server, files, tmp_path):
    name = "shard_00000.parquet"
    checked = []
    server.plan[name] = ["500", "truncated"]
    path = download_file(f"{server.url}/{name}", tmp_path / "one" / "file.bin", check=checked.append, backoff_s=0.001)
    assert path.read_bytes() == files[name] and listing(tmp_path / "one") == ["file.bin"]
    assert server.requests == [name] * 3 and len(checked) == 1  # the check saw the complete download only
    assert download_file(f"{server.url}/{name}", path) == path and len(server.requests) == 3  # there already

    with pytest.raises(UserError, match=r"could not download .*/missing.txt: HTTP 404"):
        download_file(f"{server.url}/missing.txt", tmp_path / "missing.txt", backoff_s=0.001)
    assert server.requests.count("missing.txt") == 1 and not (tmp_path / "missing.txt").exists()

    def refuse(tmp):
        raise UserError("not the file expected")

    with pytest.raises(UserError, match="after 2 attempts; last error: not the file expected"):
        download_file(f"{server.url}/{name}", tmp_path / "refused.bin", check=refuse, attempts=2, backoff_s=0.001)
    assert listing(tmp_path) == ["one"]  # nothing of the failed downloads is left, not even a .tmp file


def test_downloads_show_their_bytes(server, files, tmp_path, capsys):
    """The bar counts bytes, its total from the Content-Length headers: one file's, and all the shards' together."""
    name = "shard_00000.parquet"
    download_file(f"{server.url}/{name}", tmp_path / "one" / name)
    size = tqdm.format_sizeof(len(files[name]), divisor=1024)
    assert f"{size}/{size}" in capsys.readouterr().err.split("\r")[-1]
    fetch(server, tmp_path / "all", 2)
    size = tqdm.format_sizeof(sum(len(files[f"shard_{i:05d}.parquet"]) for i in (0, 1, 1822)), divisor=1024)
    assert f"{size}/{size}" in capsys.readouterr().err.split("\r")[-1]

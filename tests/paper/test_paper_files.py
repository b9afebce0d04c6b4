"""Blob ids, the shipped manifest, and verified downloads from a local HTTP server."""

from __future__ import annotations

import gzip
import os
import http.server
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from hiertrain.base.errors import HierError
from hiertrain.paper.paper_files import PaperFile, blob_id, fetch_files, file_blob_id, load_manifest
from hiertrain.base.resources import reference_dir


def test_blob_id_matches_git_hash_object(tmp_path):
    git = shutil.which("git")
    if git is None:
        pytest.skip("git not installed")
    for name, data in (("small.txt", b"hello hierarchy\n"), ("empty", b""), ("bin", bytes(range(256)) * 3)):
        path = tmp_path / name
        path.write_bytes(data)
        expected = subprocess.run([git, "hash-object", str(path)], capture_output=True, text=True, check=True).stdout.strip()
        assert blob_id(data) == expected
        assert file_blob_id(path) == expected


def test_shipped_manifest_lists_the_pinned_files():
    manifest = load_manifest()
    assert manifest.commit == "c86f23af084a00eda15e543b3f80f37721129723"
    assert manifest.commit in manifest.base_url
    by_path = {f.path: f for f in manifest.files}
    # blob ids quoted in issue 12 (the repository's tree at the commit)
    assert by_path["data/training/train_plant_img.json"].blob == "3ad0e17fbaf7d830d8869d28f9d9d8f0487223d1"
    assert by_path["data/annotations/random_choices/Food101_with_choice_random.jsonl"].blob == "f2854475797850ab5a73b93a09214c1e9d6afdff"
    assert by_path["probing/probing_data/VLM/Inat21_Plant_all.json"].blob == "12ab60448d20a39a4c94950cb19a97452d4dc4b7"
    assert len(manifest.fetchable("annotations")) == 10
    assert {f.local for f in manifest.fetchable("training")} == {"training/train_plant_img.json", "training/train_plant_text.json"}
    assert len(manifest.fetchable("probing")) == 2
    assert len(manifest.fetchable()) == 14
    with pytest.raises(HierError, match="--what 'everything'"):
        manifest.fetchable("everything")


def test_packaged_copies_have_the_repository_blob_ids():
    """What hiertrain ships is byte for byte the paper's file at the pinned commit."""
    packaged = [f for f in load_manifest().files if f.packaged]
    assert len(packaged) == 13  # 6 taxonomies, 2 CUB banks, 4 LLM probing splits, the CUB image split
    for item in packaged:
        data = gzip.decompress((reference_dir() / f"{item.packaged}.gz").read_bytes())
        assert blob_id(data) == item.blob, item.path


# ---- downloads from a local server -------------------------------------------------------

GOOD = b'{"image": "a.jpg", "label": "x", "split": "test"}\n' * 50
OTHER = b"[1, 2, 3]\n" * 400


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        if self.path.endswith("/cut_off.json"):  # declares more bytes than it sends
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[:100])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture()
def server(tmp_path):
    """Serves tmp_path/www on 127.0.0.1 (a free port): a good file, a corrupted one (a byte
    changed), a truncated one (cut short), and a response cut off mid-transfer."""
    www = tmp_path / "www"
    (www / "data/annotations").mkdir(parents=True)
    (www / "data/annotations/good.jsonl").write_bytes(GOOD)
    (www / "data/other.json").write_bytes(OTHER)
    (www / "data/annotations/corrupt.jsonl").write_bytes(GOOD[:10] + b"X" + GOOD[11:])
    (www / "data/annotations/truncated.jsonl").write_bytes(GOOD[: len(GOOD) // 2])
    handler = lambda *a, **k: _Handler(*a, directory=str(www), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _file(path: str, content: bytes, group="annotations") -> PaperFile:
    return PaperFile(path=path, blob=blob_id(content), group=group, local=path.removeprefix("data/"))


def test_download_verifies_and_resumes(server, tmp_path):
    out = tmp_path / "out"
    files = [_file("data/annotations/good.jsonl", GOOD), _file("data/other.json", OTHER, "training")]
    first = fetch_files(files, out, server, progress=False)
    assert first.downloaded == ["annotations/good.jsonl", "other.json"] and first.skipped == []
    assert (out / "annotations/good.jsonl").read_bytes() == GOOD
    again = fetch_files(files, out, server, progress=False)
    assert again.downloaded == [] and again.skipped == ["annotations/good.jsonl", "other.json"]
    (out / "other.json").write_bytes(b"tampered")  # present but wrong: fetched again
    third = fetch_files(files, out, server, progress=False)
    assert third.downloaded == ["other.json"] and (out / "other.json").read_bytes() == OTHER
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["good.jsonl"]  # no temp files left


@pytest.mark.parametrize("name", ["corrupt.jsonl", "truncated.jsonl"])
def test_hash_mismatch_is_one_line_and_the_file_is_not_kept(server, tmp_path, name):
    out = tmp_path / "out"
    item = PaperFile(path=f"data/annotations/{name}", blob=blob_id(GOOD), group="annotations", local=f"annotations/{name}")
    with pytest.raises(HierError, match=f"{name}: blob id [0-9a-f]{{40}} does not match the manifest's {blob_id(GOOD)}") as err:
        fetch_files([item], out, server, progress=False)
    assert "\n" not in str(err.value)
    assert not (out / "annotations" / name).exists() and not out.exists()  # nothing kept, no empty folders


def test_cut_off_transfer_http_error_and_no_network(server, tmp_path):
    out = tmp_path / "out"
    cut = _file("data/cut_off.json", GOOD)
    with pytest.raises(HierError, match="transfer truncated"):
        fetch_files([cut], out, server, progress=False)
    assert not out.exists()  # neither the file nor the folders the failed call made are left
    with pytest.raises(HierError, match="HTTP error 404"):
        fetch_files([_file("data/missing.json", GOOD)], out, server, progress=False)
    with socket_closed_port() as port:
        with pytest.raises(HierError, match="cannot connect .*--base-url"):
            fetch_files([_file("data/sub/other.json", OTHER)], out, f"http://127.0.0.1:{port}", progress=False, timeout=5)
    assert not out.exists()
    out.mkdir()  # a folder that was there before the call stays
    with pytest.raises(HierError, match="HTTP error 404"):
        fetch_files([_file("data/missing.json", GOOD)], out, server, progress=False)
    assert out.is_dir() and list(out.iterdir()) == []


class socket_closed_port:
    """A port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc) -> None:
        return None


def test_cli_fetch_with_a_fixture_manifest(server, tmp_path, capsys):
    import json

    from hiertrain.cli.main import main

    manifest = tmp_path / "manifest.json"
    files = [_file("data/annotations/good.jsonl", GOOD).__dict__, _file("data/other.json", OTHER, "training").__dict__]
    manifest.write_text(json.dumps({"repository": "r/r", "commit": "0" * 40, "base_url": "http://127.0.0.1:9/none", "files": files}))
    out = tmp_path / "out"
    args = ["data", "fetch", "paper", "--out", str(out), "--manifest", str(manifest), "--base-url", server]
    assert main([*args, "--what", "training"]) == 0
    assert (out / "other.json").read_bytes() == OTHER and not (out / "annotations").exists()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "1 downloaded, 1 already present" in text
    files[0]["blob"] = blob_id(b"something else")
    manifest.write_text(json.dumps({"repository": "r/r", "commit": "0" * 40, "base_url": server, "files": files}))
    (out / "annotations/good.jsonl").unlink()
    assert main(["data", "fetch", "paper", "--out", str(out), "--manifest", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hiertrain: ") and "does not match" in err and err.count("\n") == 1
    assert not (out / "annotations/good.jsonl").exists()


# ---- issue 22 item 16 ----------------------------------------------------------------------


def test_cut_off_transfer_says_truncated_not_mismatch(server, tmp_path):
    # the server announces len(GOOD) bytes and sends 100: that is a truncated transfer to rerun,
    # not a file whose content differs from the repository's
    out = tmp_path / "out"
    with pytest.raises(HierError, match=rf"cut_off.json: transfer truncated \(100 of {len(GOOD)} bytes received; not kept\); rerun") as err:
        fetch_files([_file("data/cut_off.json", GOOD)], out, server, progress=False)
    assert "does not match" not in str(err.value)
    assert not out.exists()


def test_stale_temp_file_of_a_killed_fetch_is_removed_on_the_next_run(server, tmp_path, capsys):
    import json
    import subprocess
    import sys

    from hiertrain.cli.main import main

    out = tmp_path / "out"
    (out / "annotations").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    stale = out / f"annotations/good.jsonl.{dead.stdout.strip()}.tmp"  # what kill -9 left mid-download
    stale.write_bytes(GOOD[:100])
    live = out / f"annotations/good.jsonl.{os.getppid()}.tmp"  # a process that is running: not touched
    live.write_bytes(b"x")
    manifest = tmp_path / "manifest.json"
    files = [_file("data/annotations/good.jsonl", GOOD).__dict__]
    manifest.write_text(json.dumps({"repository": "r/r", "commit": "0" * 40, "base_url": server, "files": files}))
    assert main(["data", "fetch", "paper", "--out", str(out), "--manifest", str(manifest)]) == 0
    assert f"removed  {stale} (temp file of an interrupted earlier fetch)" in capsys.readouterr().out
    assert not stale.exists() and live.exists()
    assert (out / "annotations/good.jsonl").read_bytes() == GOOD


@pytest.mark.parametrize("local", ["../../x.json", "/tmp/hiertrain-issue22-abs.json", "annotations/../../x.json", "..", "C:/x.json"])
@pytest.mark.slow
def test_manifest_local_outside_out_is_refused(server, tmp_path, capsys, local):
    import json

    from hiertrain.cli.main import main

    out = tmp_path / "a" / "b" / "out"
    manifest = tmp_path / "manifest.json"
    entry = {**_file("data/annotations/good.jsonl", GOOD).__dict__, "local": local}
    manifest.write_text(json.dumps({"repository": "r/r", "commit": "0" * 40, "base_url": server, "files": [entry]}))
    assert main(["data", "fetch", "paper", "--out", str(out), "--manifest", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"local path {local!r} leaves --out" in err
    assert not (tmp_path / "a" / "x.json").exists() and not Path("/tmp/hiertrain-issue22-abs.json").exists() and not out.exists()
    # the library refuses too, whoever built the list
    with pytest.raises(HierError, match="leaves --out"):
        fetch_files([PaperFile(path="data/annotations/good.jsonl", blob=blob_id(GOOD), group="annotations", local=local)], out, server, progress=False)

"""The fetch stage against local files, file:// URLs and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from sentiment_rnn import cli, fetch, paths
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import DataParams, parse_params

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
ARCHIVE_ROUTE = "/aclImdb_v1.tar.gz"
# No waiting between retries, and few of them, so failure tests take milliseconds.
FAST = fetch.RetryPolicy(attempts=3, backoff_s=0.0, connect_timeout_s=2.0, read_timeout_s=5.0)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw_params(url: str, sha: str) -> dict:
    """The repository's params.yaml with data.url and data.sha256 replaced."""
    raw = yaml.safe_load(REPO_PARAMS.read_text(encoding="utf-8"))
    raw["data"]["url"] = url
    raw["data"]["sha256"] = sha
    return raw


def data_params(url: str, sha: str) -> DataParams:
    return parse_params(raw_params(url, sha)).data


def raw_dir_files() -> list[Path]:
    return sorted(paths.RAW_DIR.glob("*")) if paths.RAW_DIR.exists() else []


def cache_files() -> list[Path]:
    cache = paths.DOWNLOAD_CACHE_DIR
    return sorted(cache.glob("*")) if cache.exists() else []


@dataclass
class ArchiveServer:
    """A real HTTP server that serves one payload, honours Range, and misbehaves on request.

    ``actions`` is consumed one per request: "ok", "drop" (send half the body, then close),
    "drop0" (send the headers, then close), "ignore-range" (answer 200 with the whole file)
    or a status code such as "503".
    """

    payload: bytes
    port: int = 0
    actions: list[str] = field(default_factory=list)
    seen: list[dict[str, str | None]] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{ARCHIVE_ROUTE}"


def make_handler(server: ArchiveServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # keep the test output clean

        def do_GET(self) -> None:  # noqa: N802
            server.seen.append({"path": self.path, "range": self.headers.get("Range")})
            action = server.actions.pop(0) if server.actions else "ok"
            if self.path != ARCHIVE_ROUTE:
                self.send_error(404)
                return
            if action.isdigit():
                self.send_error(int(action))
                return
            payload = server.payload
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and action != "ignore-range":
                start = int(match.group(1))
                if start >= len(payload):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(payload)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                end = len(payload) - 1
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(payload)}")
            else:
                self.send_response(200)
            body = payload[start:]
            self.send_header("Content-Type", "application/x-gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if action == "drop":
                body = body[: len(body) // 2]
            elif action == "drop0":
                body = b""
            self.wfile.write(body)
            self.wfile.flush()
            server.sent.append(len(body))
            # HTTP/1.0: the connection closes after each answer, so a short body is a break.
            self.close_connection = True

    return Handler


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[callable]:
    """Start ArchiveServers on 127.0.0.1 for a test; stop them afterwards."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    started: list[ThreadingHTTPServer] = []

    def start(payload: bytes, actions: list[str] | None = None) -> ArchiveServer:
        archive_server = ArchiveServer(payload, actions=list(actions or []))
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(archive_server))
        archive_server.port = httpd.server_address[1]
        # A short poll interval keeps shutdown() quick at teardown.
        serving = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
        serving.start()
        started.append(httpd)
        return archive_server

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test from an empty project root."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_fetch_from_relative_local_path(project: Path, small_archive: Path) -> None:
    relative = small_archive.relative_to(project).as_posix()
    target = fetch.main(data_params(relative, sha256(small_archive)))
    assert target == paths.archive_path()
    assert target.read_bytes() == small_archive.read_bytes()
    assert cache_files() == []


def test_fetch_from_file_url(project: Path, small_archive: Path) -> None:
    target = fetch.main(data_params(small_archive.as_uri(), sha256(small_archive)))
    assert target.read_bytes() == small_archive.read_bytes()


def test_missing_local_path_is_a_user_error(project: Path) -> None:
    with pytest.raises(UserError, match=r"data\.url = 'nowhere/aclImdb_v1.tar.gz'.*does not"):
        fetch.main(data_params("nowhere/aclImdb_v1.tar.gz", "0" * 64))
    assert raw_dir_files() == []


def test_unsupported_scheme_is_a_user_error(project: Path) -> None:
    with pytest.raises(UserError, match="unsupported scheme 'ftp'"):
        fetch.main(data_params("ftp://example.invalid/aclImdb_v1.tar.gz", "0" * 64))


def test_download_over_http(project: Path, small_archive: Path, serve) -> None:
    server = serve(small_archive.read_bytes())
    target = fetch.main(data_params(server.url, sha256(small_archive)), FAST)
    assert target.read_bytes() == small_archive.read_bytes()
    assert [request["range"] for request in server.seen] == [None]
    assert cache_files() == []


def test_connection_dropped_mid_body_is_resumed(project: Path, small_archive: Path, serve) -> None:
    payload = small_archive.read_bytes()
    server = serve(payload, actions=["drop"])
    target = fetch.main(data_params(server.url, sha256(small_archive)), FAST)
    assert target.read_bytes() == payload
    assert len(server.seen) == 2
    assert 0 < server.sent[0] < len(payload)
    assert server.seen[1]["range"] == f"bytes={server.sent[0]}-"
    assert server.sent[0] + server.sent[1] == len(payload)


def test_partial_download_is_resumed_by_the_next_run(
    project: Path, small_archive: Path, serve
) -> None:
    payload = small_archive.read_bytes()
    data = data_params("http://placeholder", sha256(small_archive))
    # First run: half the body, then the body keeps breaking off without progress.
    broken = serve(payload, actions=["drop", "drop0", "drop0", "drop0"])
    with pytest.raises(UserError, match="broke off 3 times in a row.*run again to resume"):
        fetch.main(data.model_copy(update={"url": broken.url}), FAST)
    assert raw_dir_files() == []
    [partial] = cache_files()
    assert partial.read_bytes() == payload[: broken.sent[0]]

    healthy = serve(payload)
    target = fetch.main(data.model_copy(update={"url": healthy.url}), FAST)
    assert target.read_bytes() == payload
    assert healthy.seen[0]["range"] == f"bytes={broken.sent[0]}-"
    assert cache_files() == []


def test_server_that_ignores_range_restarts_from_zero(
    project: Path, small_archive: Path, serve
) -> None:
    payload = small_archive.read_bytes()
    paths.DOWNLOAD_CACHE_DIR.mkdir(parents=True)
    sha = sha256(small_archive)
    # A partial file of wrong bytes: only a restart from byte 0 yields the right archive.
    (paths.DOWNLOAD_CACHE_DIR / f"{paths.ARCHIVE_NAME}.{sha[:16]}.part").write_bytes(b"x" * 100)
    server = serve(payload, actions=["ignore-range"])
    target = fetch.main(data_params(server.url, sha), FAST)
    assert server.seen[0]["range"] == "bytes=100-"
    assert target.read_bytes() == payload


def test_complete_partial_answered_416_is_used(project: Path, small_archive: Path, serve) -> None:
    payload = small_archive.read_bytes()
    sha = sha256(small_archive)
    paths.DOWNLOAD_CACHE_DIR.mkdir(parents=True)
    (paths.DOWNLOAD_CACHE_DIR / f"{paths.ARCHIVE_NAME}.{sha[:16]}.part").write_bytes(payload)
    server = serve(payload)
    target = fetch.main(data_params(server.url, sha), FAST)
    assert server.seen[0]["range"] == f"bytes={len(payload)}-"
    assert len(server.seen) == 1  # no second download from byte 0
    assert target.read_bytes() == payload


def test_transient_5xx_is_retried(project: Path, small_archive: Path, serve) -> None:
    server = serve(small_archive.read_bytes(), actions=["503", "502"])
    target = fetch.main(data_params(server.url, sha256(small_archive)), FAST)
    assert len(server.seen) == 3
    assert target.read_bytes() == small_archive.read_bytes()


def test_persistent_5xx_names_status_and_url(project: Path, small_archive: Path, serve) -> None:
    server = serve(small_archive.read_bytes(), actions=["503"] * 3)
    with pytest.raises(UserError, match=rf"HTTP 503 .*from {re.escape(server.url)} after 3"):
        fetch.main(data_params(server.url, sha256(small_archive)), FAST)
    assert raw_dir_files() == []


def test_already_present_file_is_not_downloaded_again(
    project: Path, small_archive: Path, serve, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(small_archive.read_bytes())
    data = data_params(server.url, sha256(small_archive))
    fetch.main(data, FAST)
    assert len(server.seen) == 1

    caplog.set_level("INFO", logger="sentiment_rnn")
    fetch.main(data, FAST)
    assert len(server.seen) == 1
    assert "already present" in caplog.text


def test_present_file_with_wrong_checksum_is_replaced(
    project: Path, small_archive: Path, serve
) -> None:
    paths.RAW_DIR.mkdir(parents=True)
    paths.archive_path().write_bytes(b"stale")
    server = serve(small_archive.read_bytes())
    target = fetch.main(data_params(server.url, sha256(small_archive)), FAST)
    assert len(server.seen) == 1
    assert target.read_bytes() == small_archive.read_bytes()


def test_checksum_mismatch_names_both_sums(project: Path, small_archive: Path, serve) -> None:
    server = serve(small_archive.read_bytes())
    wrong = "ab" * 32
    with pytest.raises(UserError) as caught:
        fetch.main(data_params(server.url, wrong), FAST)
    message = str(caught.value)
    assert wrong in message
    assert sha256(small_archive) in message
    assert "data.sha256" in message
    assert "\n" not in message
    assert raw_dir_files() == []
    assert cache_files() == []


def test_not_a_gzip_tar_with_matching_sha_is_rejected(project: Path, tmp_path: Path) -> None:
    page = tmp_path / "elsewhere" / "aclImdb_v1.tar.gz"
    page.parent.mkdir()
    page.write_text("<html>Moved permanently</html>")
    with pytest.raises(UserError, match="matches data.sha256 but is not a gzip tar"):
        fetch.main(data_params(str(page), sha256(page)))
    assert raw_dir_files() == []
    assert cache_files() == []


def test_http_404_names_status_and_url(project: Path, small_archive: Path, serve) -> None:
    server = serve(small_archive.read_bytes())
    url = server.url.replace(ARCHIVE_ROUTE, "/missing.tar.gz")
    with pytest.raises(UserError, match=rf"HTTP 404 .*from {re.escape(url)}; fix data.url"):
        fetch.main(data_params(url, sha256(small_archive)), FAST)
    assert raw_dir_files() == []


def test_unreachable_host_points_to_offline_option(project: Path) -> None:
    # A port that was free a moment ago: nothing listens, so connecting is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/aclImdb_v1.tar.gz"
    with pytest.raises(UserError) as caught:
        fetch.main(data_params(url, "0" * 64), FAST)
    message = str(caught.value)
    assert "connection refused" in message
    assert "dvc exp run -S data.url=" in message
    assert raw_dir_files() == []
    assert cache_files() == []


def test_cli_checksum_mismatch_exits_2_with_one_line(
    project: Path, small_archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params_file = project / "params.yaml"
    raw = raw_params(str(small_archive), "cd" * 32)
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")

    status = cli.main(["--params", str(params_file), "fetch"])

    assert status == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1
    assert errors[0].startswith("sentiment-rnn fetch: error: checksum mismatch")
    assert "cd" * 32 in errors[0] and sha256(small_archive) in errors[0]
    assert "Traceback" not in stderr
    assert raw_dir_files() == []

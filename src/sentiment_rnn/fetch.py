"""The fetch stage: put the review archive at ``data/raw/aclImdb_v1.tar.gz``, checked by sha256.

Reads ``data.url`` and ``data.sha256`` from ``params.yaml``. The URL is an ``http(s)://`` address,
a local path (relative paths resolve against the project root) or a ``file://`` URL, so the
pipeline also runs offline from a copy of the archive.

A download streams into ``data/download-cache/`` with a progress bar, retries connection errors,
timeouts and 5xx answers with exponential backoff, and resumes a broken transfer with an HTTP
``Range`` request, in the same run or in the next one. Only a file whose sha256 matches and that
opens as a gzip tar is moved into ``data/raw/``, by a rename, so nothing half-written ever
appears there. A second run that finds the right file in place downloads nothing.

Run it with ``sentiment-rnn fetch`` or ``dvc repro fetch``.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import logging
import os
import shutil
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from sentiment_rnn import paths
from sentiment_rnn.errors import UserError
from sentiment_rnn.params import DataParams, Params

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16
MEGABYTE = 1_000_000
GZIP_MAGIC = b"\x1f\x8b"
# Answers worth retrying: the server or a proxy in front of it is failing for now.
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
OFFLINE_HINT = (
    "to run offline, set data.url to a local copy of the archive, e.g. "
    "`dvc exp run -S data.url=/path/aclImdb_v1.tar.gz -S data.sha256=<its sha256>`"
)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard a download tries before it gives up.

    Attributes:
        attempts: Tries for one failure streak: connecting, a 5xx answer, or a body that breaks
            off without delivering a byte. A try that delivers bytes starts a new streak.
        backoff_s: The wait before the second retry; it doubles on each retry after that.
        connect_timeout_s: Seconds to wait for a connection.
        read_timeout_s: Seconds to wait for the next bytes of an answer.
    """

    attempts: int = 5
    backoff_s: float = 1.0
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0


class _Restart(Exception):
    """The partial file cannot be continued: the server sent something else; start over."""


def main(data: DataParams, retry: RetryPolicy | None = None) -> Path:
    """Fetch the archive named by ``data.url`` and check it against ``data.sha256``.

    Args:
        data: The ``data`` section of ``params.yaml``.
        retry: Retry and timeout settings for downloads; the defaults suit a real network.

    Returns:
        The archive's path, ``data/raw/aclImdb_v1.tar.gz``.

    Raises:
        UserError: If the source is missing or unreachable, the server answers with an error,
            the checksum differs, or the file is not a gzip tar. Nothing is left in
            ``data/raw/`` then.
    """
    retry = retry or RetryPolicy()
    target = paths.archive_path()
    expected = data.sha256.lower()

    if target.is_symlink() and not target.exists():
        target.unlink()  # a link into a DVC cache that no longer holds the file
    if target.exists():
        actual = _sha256_of(target)
        if actual == expected:
            _require_gzip_tar(target, data.url)
            log.info("%s already present with sha256 %s; not fetching again", target, expected)
            return target
        # A stale archive must not outlive a failed fetch: preprocess would read it.
        log.warning("%s has sha256 %s, not %s; fetching it again", target, actual, expected)
        target.unlink()

    source = _local_source(data.url)
    paths.DOWNLOAD_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # Keyed by the checksum, so a partial file is only ever continued for the same archive.
    partial = paths.DOWNLOAD_CACHE_DIR / f"{paths.ARCHIVE_NAME}.{expected[:16]}.part"
    started = time.monotonic()
    if source is not None:
        log.info("Copying %s", source)
        actual, resumed = _copy_local(source, partial), False
    else:
        log.info("Downloading %s", data.url)
        actual, resumed = _download(data.url, partial, retry)
    seconds = time.monotonic() - started

    _verify(partial, data.url, expected, actual, resumed)
    _install(partial, target)
    size = target.stat().st_size
    log.info(
        "%s ready: %.1f MB, sha256 %s, fetched in %.2f s (%.0f MB/s)",
        target,
        size / MEGABYTE,
        expected,
        seconds,
        size / MEGABYTE / max(seconds, 1e-6),
    )
    return target


def run_cli(args: argparse.Namespace, params: Params) -> int:
    """The ``sentiment-rnn fetch`` subcommand."""
    del args  # fetch has no options of its own
    main(params.data)
    return 0


def _local_source(url: str) -> Path | None:
    """The local file that ``url`` names, or None for an http(s) URL.

    Raises:
        UserError: For another scheme, or a local file that does not exist.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UserError(
                f"data.url = {url!r}: a file:// URL must name a local file "
                "(file:///absolute/path); fix data.url in params.yaml"
            )
        source = Path(url2pathname(unquote(parts.path)))
    elif len(scheme) > 1:
        # One letter is a Windows drive ("C:\\..."), not a scheme.
        raise UserError(
            f"data.url = {url!r}: unsupported scheme {scheme!r}; use an http(s) URL, "
            "a local path or a file:// URL"
        )
    else:
        source = Path(url).expanduser()
    if not source.is_file():
        what = "is not a file" if source.exists() else "does not exist"
        raise UserError(
            f"data.url = {url!r}: {source.resolve()} {what}; fix data.url in params.yaml "
            "(relative paths start at the project root)"
        )
    return source


def _copy_local(source: Path, partial: Path) -> str:
    """Copy a local archive into the cache, hashing it on the way; return its sha256."""
    digest = hashlib.sha256()
    try:
        with (
            open(source, "rb") as reader,
            open(partial, "wb") as writer,
            _Progress(source.stat().st_size, 0, source.name) as progress,
        ):
            while chunk := reader.read(CHUNK_BYTES * 16):
                writer.write(chunk)
                digest.update(chunk)
                progress.update(len(chunk))
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise UserError(
            f"cannot copy {source} to {partial}: {error.strerror or error}; "
            "check data.url and the free space"
        ) from None
    return digest.hexdigest()


def _download(url: str, partial: Path, retry: RetryPolicy) -> tuple[str, bool]:
    """Download ``url`` into ``partial``, continuing what is already there.

    Returns:
        The sha256 of the complete file, and whether it continued bytes from an earlier try.

    Raises:
        UserError: When the server cannot be reached, answers with an error, or the body keeps
            breaking off. The partial file stays for the next run to resume.
    """
    import requests

    resumed = False
    streak = 0
    with _session(retry) as session:
        while True:
            offset = partial.stat().st_size if partial.exists() else 0
            try:
                resumed = _download_once(session, url, partial, offset, retry) or resumed
                break
            except _Restart as reason:
                log.warning("Cannot resume %s (%s); downloading it from the start", url, reason)
                partial.unlink(missing_ok=True)
                resumed = False
            except requests.exceptions.RequestException as error:
                # urllib3 has already retried connecting `attempts` times, with backoff.
                if partial.exists() and partial.stat().st_size == 0:
                    partial.unlink()
                raise UserError(_unreachable_message(url, error, partial)) from None
            except _BodyBroken as broken:
                resumed = broken.continued or resumed
                # A try that delivered bytes made progress: only fruitless tries add up.
                streak = 1 if broken.received else streak + 1
                size = partial.stat().st_size
                if streak >= retry.attempts:
                    raise UserError(
                        f"download of {url} broke off {streak} times in a row at {size} of "
                        f"{broken.total or '?'} bytes ({broken.reason}); run again to resume "
                        f"from {partial}, or {OFFLINE_HINT}"
                    ) from None
                wait = retry.backoff_s * 2 ** (streak - 1)
                log.warning(
                    "Download broke off at byte %d (%s); resuming in %.1f s",
                    size,
                    broken.reason,
                    wait,
                )
                time.sleep(wait)
    return _sha256_of(partial), resumed


class _BodyBroken(Exception):
    """The body stopped before its end; what arrived is on disk."""

    def __init__(self, reason: str, received: int, total: int | None, continued: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.received = received
        self.total = total
        self.continued = continued


def _download_once(
    session: requests.Session, url: str, partial: Path, offset: int, retry: RetryPolicy
) -> bool:
    """One GET that writes ``partial`` from ``offset`` to the end of the file.

    Returns:
        Whether the file continues bytes stored before this request.

    Raises:
        _Restart: The server cannot continue the partial file.
        _BodyBroken: The body stopped before its end.
        UserError: The server answered with an error status.
    """
    import urllib3

    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        log.info("Resuming at byte %d", offset)
    response = session.get(
        url,
        headers=headers,
        stream=True,
        timeout=(retry.connect_timeout_s, retry.read_timeout_s),
    )
    with response:
        status = response.status_code
        content_range = response.headers.get("Content-Range", "")
        if offset and status == 416:
            if _content_range_total(content_range) == offset:
                # An earlier run stored every byte but stopped before checking them.
                return True
            raise _Restart(f"HTTP 416 for a range from byte {offset}")
        if status >= 400:
            raise UserError(_status_message(url, response, retry))
        if status == 206:
            start = _content_range_start(content_range)
            if start != offset:
                raise _Restart(f"the server sent bytes from {start}, not from {offset}")
            total = _content_range_total(content_range)
            mode = "ab"
        else:
            if offset:
                log.info("The server ignored the range and sends the whole file; starting over")
                offset = 0
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
            mode = "wb"
        continued = offset > 0

        received = 0
        with (
            open(partial, mode) as writer,
            _Progress(total, offset, paths.ARCHIVE_NAME) as progress,
        ):
            try:
                # The raw stream keeps the bytes as sent, even if a server gzips them anyway.
                for chunk in response.raw.stream(CHUNK_BYTES, decode_content=False):
                    writer.write(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
            except (urllib3.exceptions.HTTPError, OSError) as error:
                raise _BodyBroken(_one_line(error), received, total, continued) from None
        if total is not None and offset + received < total:
            # Some servers close early without an error.
            raise _BodyBroken("the body ended early", received, total, continued)
    return continued


def _session(retry: RetryPolicy) -> requests.Session:
    """A requests session that retries connecting, timeouts and 5xx answers with backoff."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    policy = Retry(
        total=retry.attempts - 1,
        connect=retry.attempts - 1,
        read=retry.attempts - 1,
        status=retry.attempts - 1,
        other=0,
        backoff_factor=retry.backoff_s,
        backoff_max=60.0,
        status_forcelist=TRANSIENT_STATUSES,
        allowed_methods=frozenset({"GET"}),
        # Hand the last 5xx answer back, so the error names its status rather than urllib3's.
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=policy)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _status_message(url: str, response: requests.Response, retry: RetryPolicy) -> str:
    """One line for an HTTP error answer."""
    status = response.status_code
    text = f"HTTP {status} {response.reason or ''}".rstrip()
    if status in TRANSIENT_STATUSES:
        return (
            f"{text} from {url} after {retry.attempts} attempts; the server is failing, "
            f"try again later, or {OFFLINE_HINT}"
        )
    return f"{text} from {url}; fix data.url in params.yaml"


def _unreachable_message(url: str, error: Exception, partial: Path) -> str:
    """One line for a server that cannot be reached, naming the cause and the offline option."""
    import requests
    import urllib3

    chain: list[BaseException] = []
    link: BaseException | None = error
    while link is not None and len(chain) < 10:
        chain.append(link)
        if isinstance(link, urllib3.exceptions.MaxRetryError) and link.reason is not None:
            link = link.reason
        else:
            link = link.__cause__ or link.__context__

    def found(*kinds: type[BaseException]) -> BaseException | None:
        return next((link for link in chain if isinstance(link, kinds)), None)

    refused = found(ConnectionRefusedError)
    # urllib3 makes every failed connection a ConnectTimeoutError subclass; test refusals first.
    failed = found(urllib3.exceptions.NewConnectionError)
    if found(urllib3.exceptions.NameResolutionError):
        why = f"host {urlsplit(url).hostname} not found (no network, or no DNS)"
    elif refused is not None:
        why = "connection refused"
    elif failed is not None:
        cause = failed.__cause__
        why = f"cannot connect ({_one_line(cause or failed)}); no network?"
    elif found(urllib3.exceptions.ConnectTimeoutError, requests.exceptions.ConnectTimeout):
        why = "timed out connecting (no network?)"
    elif found(requests.exceptions.Timeout, urllib3.exceptions.ReadTimeoutError):
        why = "timed out waiting for an answer"
    elif found(requests.exceptions.SSLError):
        why = f"TLS error ({_one_line(error)})"
    else:
        why = _one_line(error)
    kept = f"; the partial download {partial} is kept for the next run" if partial.exists() else ""
    return f"cannot download {url}: {why}{kept}; {OFFLINE_HINT}"


def _verify(partial: Path, url: str, expected: str, actual: str, resumed: bool) -> None:
    """Check the sha256, then that the file is a gzip tar; delete it if either fails."""
    if actual != expected:
        not_tar = "" if _is_gzip_tar(partial) else "; it is not even a gzip tar"
        partial.unlink()
        retried = (
            "; it was resumed from an earlier partial download (now deleted), so running again "
            "downloads it whole"
            if resumed
            else ""
        )
        raise UserError(
            f"checksum mismatch for {url}: expected sha256 {expected} (data.sha256), got "
            f"{actual}{not_tar}{retried}; change data.sha256 in params.yaml if this file is "
            "the one you want, or fix data.url"
        )
    if not _is_gzip_tar(partial):
        partial.unlink()
        _raise_not_tar(url)


def _require_gzip_tar(path: Path, url: str) -> None:
    """Delete ``path`` and raise if it is not a gzip tar."""
    if not _is_gzip_tar(path):
        path.unlink()
        _raise_not_tar(url)


def _raise_not_tar(url: str) -> NoReturn:
    """Raise the error for a file with the right checksum that is not a gzip tar."""
    raise UserError(
        f"{url} matches data.sha256 but is not a gzip tar archive; point data.url at "
        "aclImdb_v1.tar.gz and set data.sha256 to that file's checksum"
    )


def _install(partial: Path, target: Path) -> None:
    """Move the checked file into place by a rename, so readers never see half of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(partial, target)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        # The cache is on another file system: copy next to the target, then rename.
        temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            shutil.copyfile(partial, temporary)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        partial.unlink()


def _sha256_of(path: Path) -> str:
    """The sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as reader:
        while block := reader.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _is_gzip_tar(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic and its first tar member can be read."""
    try:
        with open(path, "rb") as reader:
            if reader.read(2) != GZIP_MAGIC:
                return False
        with tarfile.open(path, "r:gz") as archive:
            return archive.next() is not None
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return False


def _content_range_start(header: str) -> int | None:
    """The first byte of ``bytes START-END/TOTAL``, or None if the header is malformed."""
    try:
        return int(header.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _content_range_total(header: str) -> int | None:
    """The total of ``bytes START-END/TOTAL`` or ``bytes */TOTAL``, or None if unknown."""
    total = header.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else None


def _one_line(error: BaseException) -> str:
    """An exception's text on one line, short enough for an error message."""
    # urllib3's ProtocolError holds (message, cause); the message alone reads better.
    first = error.args[0] if error.args else None
    text = first if isinstance(first, str) else str(error)
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class _Progress:
    """Byte progress: a tqdm bar on a terminal, else a log line every ``LOG_EVERY_S`` seconds.

    Logs (DVC in CI, a cron job) would otherwise show nothing during a long download, and a
    tqdm bar written to a file is one line of carriage returns.
    """

    LOG_EVERY_S = 10.0

    def __init__(self, total: int | None, initial: int, name: str) -> None:
        from tqdm import tqdm

        self.total = total
        self.done = initial
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=name,
            unit="B",
            unit_scale=True,
            file=sys.stderr,
            disable=None,
            leave=False,
        )
        self.logged_at = time.monotonic()

    def update(self, count: int) -> None:
        """Count ``count`` more bytes."""
        self.done += count
        self.bar.update(count)
        if self.bar.disable and time.monotonic() - self.logged_at >= self.LOG_EVERY_S:
            self.logged_at = time.monotonic()
            of_total = f" of {self.total / MEGABYTE:.1f}" if self.total else ""
            log.info("%.1f%s MB so far", self.done / MEGABYTE, of_total)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.close()

"""Encoder weight files: the weights folder's layout, its SHA256SUMS, checked downloads, the Hugging Face cache.

A weights folder (`--weights-dir DIR`, `$SEGLAB_WEIGHTS_DIR`) mirrors the Hugging Face Hub, where
SMP 0.6 and timm keep their encoder weights: a file of repository REPO is DIR/REPO/FILE, e.g.

    DIR/smp-hub/resnet34.imagenet/model.safetensors    SMP's encoders: weights ...
    DIR/smp-hub/resnet34.imagenet/config.json          ... and their input normalisation
    DIR/timm/convnext_tiny.in12k_ft_in1k/model.safetensors    timm's (tu-) encoders
    DIR/SHA256SUMS                                     `sha256sum -c SHA256SUMS` checks a copied folder

`download_checked` writes a file only after its SHA-256 (or, for the small files git keeps itself,
its git blob SHA-1) matched what the Hub publishes for it; nothing here imports huggingface_hub
unless a file is looked up in, or downloaded into, the Hugging Face cache.
"""
from __future__ import annotations

import hashlib
import os
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from seglab.data.writing import atomic_output, write_error
from seglab.errors import SeglabError

MANIFEST = "SHA256SUMS"
DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT = 30.0  # seconds without a byte before a download is given up
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class HubFile:
    """One file of a Hugging Face Hub repository at a revision (a commit, or "main")."""

    repo_id: str
    filename: str
    revision: str = "main"

    @property
    def relative(self) -> str:
        """Its path inside a weights folder: REPO/FILE."""
        return f"{self.repo_id}/{self.filename}"

    def url(self) -> str:
        endpoint = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
        return f"{endpoint}/{self.repo_id}/resolve/{self.revision}/{self.filename}"


# ---- the manifest --------------------------------------------------------------------------------
def read_manifest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} from folder/SHA256SUMS (`sha256sum` format), {} when there is none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.strip().partition("  ")
        if name and _HEX.match(digest):
            entries[name.strip()] = digest
    return entries


def write_manifest(folder: Path, entries: dict[str, str]) -> None:
    with atomic_output(Path(folder) / MANIFEST) as tmp:
        tmp.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(entries.items())))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The id git gives a file's content (sha1 of "blob SIZE\\0" + content): the Hub's ETag of small files."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def verified_in_folder(folder: Path, file: HubFile) -> Path | None:
    """folder/REPO/FILE if it is there (checked against SHA256SUMS when listed there), else None."""
    path = Path(folder) / file.relative
    if not path.is_file():
        return None
    expected = read_manifest(folder).get(file.relative)
    if expected is not None and sha256_of(path) != expected:
        raise SeglabError(f"'{path}' is damaged: its SHA-256 differs from the one in {Path(folder) / MANIFEST}; "
                          f"fetch it again (`seglab weights fetch ... --dest {folder}`) or download {file.url()}")
    return path


# ---- checked downloads ---------------------------------------------------------------------------
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Stop at the Hub's own answer: a redirect to the file's storage carries the hash headers."""

    def redirect_request(self, *args, **kwargs):
        return None


def published_hash(url: str) -> tuple[str, str]:
    """("sha256" | "git-sha1", hex digest) the Hub publishes for the file at `url`: X-Linked-Etag (the
    SHA-256 of large, LFS-stored files) or the ETag (the git blob SHA-1 of small files)."""
    request = urllib.request.Request(url, method="HEAD")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        response = opener.open(request, timeout=TIMEOUT)
        headers = response.headers
    except urllib.error.HTTPError as error:
        if error.code not in (301, 302, 303, 307, 308):
            raise SeglabError(f"cannot fetch {url}: the server answered {error.code} {error.reason}") from None
        headers = error.headers
    except (urllib.error.URLError, OSError) as error:
        raise SeglabError(f"cannot reach {url} ({_reason(error)})") from None
    tag = (headers.get("X-Linked-Etag") or headers.get("ETag") or "").strip().removeprefix("W/").strip('"').lower()
    if _HEX.match(tag) and len(tag) == 64:
        return "sha256", tag
    if _HEX.match(tag) and len(tag) == 40:
        return "git-sha1", tag
    raise SeglabError(f"{url} has no published hash (ETag {tag!r}) to check a download against; nothing was fetched")


def download_checked(file: HubFile, dest: Path) -> tuple[Path, str]:
    """Download `file` to dest/REPO/FILE, keeping it only if its hash matches the published one.

    Returns (path, sha256). Raises SeglabError naming the URL when the server cannot be reached,
    answers an error, or sends bytes whose hash differs; the previous file, if any, stays.
    """
    url = file.url()
    kind, expected = published_hash(url)
    path = Path(dest) / file.relative
    digest = hashlib.sha256()
    try:
        with atomic_output(path) as tmp:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(tmp, "wb") as handle:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        digest.update(block)
                        handle.write(block)
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                raise SeglabError(f"cannot download {url} ({_reason(error)}); nothing was kept") from None
            got = digest.hexdigest() if kind == "sha256" else git_blob_sha1(tmp)
            if got != expected:
                raise SeglabError(f"downloaded {url} but its {kind} {got[:16]}... differs from the published "
                                  f"{expected[:16]}...: nothing was kept; fetch it again")
    except OSError as error:
        raise write_error(path, error) from None
    return path, digest.hexdigest()


def _reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None) or error
    return " ".join(str(reason).split())[:160]


# ---- the Hugging Face cache ----------------------------------------------------------------------
def hub_reachable(timeout: float = 5.0) -> str | None:
    """None when the Hub (HF_ENDPOINT) answers a TCP connection, else why not: the quick test that
    spares an offline machine huggingface_hub's retries (about 25 s per file)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError as error:
        return f"{endpoint.hostname} is unreachable: {_reason(error)}"
    return None


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def from_hf_cache(file: HubFile) -> tuple[Path | None, str]:
    """(path, "") of the file in the Hugging Face cache, downloaded there by huggingface_hub when it is
    missing and the Hub is reachable; (None, why not) when it is missing and the Hub is not."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(file.repo_id, file.filename, revision=file.revision)
    if isinstance(cached, str) and os.path.isfile(cached):
        return Path(cached), ""
    unreachable = hub_reachable()
    if unreachable is not None:
        return None, unreachable
    try:
        return Path(hf_hub_download(file.repo_id, file.filename, revision=file.revision)), ""
    except Exception as error:  # noqa: BLE001 - huggingface_hub raises many kinds (HTTP, offline, disk)
        raise SeglabError(f"cannot download {file.url()} into the Hugging Face cache ({_reason(error)})") from None

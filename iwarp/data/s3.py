"""S3 helpers (boto3) for data outside DVC: upload/download a folder or a file.

Endpoint: the `endpoint_url` argument, else `$IWARP_S3_ENDPOINT_URL`, else `$AWS_ENDPOINT_URL_S3`
/ `$AWS_ENDPOINT_URL` (boto3 reads those itself), else AWS. Credentials: boto3's usual chain
(`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, IRSA web identity, instance roles).
Missing credentials fail before any transfer with `S3CredentialsError` saying what to set.
"""

from __future__ import annotations

import os
from pathlib import Path

from iwarp.errors import InputError, IwarpError, ServiceUnavailable

ENDPOINT_ENV = "IWARP_S3_ENDPOINT_URL"


class S3Error(IwarpError, RuntimeError):
    """An S3 operation that failed, with a message a person can act on."""


class S3CredentialsError(InputError, S3Error):
    """No or wrong credentials: fix the environment (exit 2)."""


class S3Unreachable(ServiceUnavailable, S3Error):
    """The S3 endpoint cannot be reached (exit 3)."""


def parse_url(url: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' -> ('bucket', 'some/prefix')."""
    if not url.startswith("s3://") or len(url) <= 5:
        raise S3Error(f"not an S3 URL (want s3://bucket/prefix): {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


def client(endpoint_url: str | None = None):
    """A boto3 S3 client; raises S3CredentialsError when no credentials are configured."""
    import boto3

    session = boto3.session.Session()
    if session.get_credentials() is None:
        raise S3CredentialsError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or "
            "run where an IAM role / IRSA provides them). For DVC remotes the same variables apply."
        )
    endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
    return session.client("s3", endpoint_url=endpoint, region_name=session.region_name or "us-east-1")


def _call(what: str, fn, *args, **kwargs):
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        return fn(*args, **kwargs)
    except NoCredentialsError as exc:
        raise S3CredentialsError(f"{what}: no AWS credentials ({exc})") from exc
    except ClientError as exc:
        raise _client_error(what, exc) from exc
    except Boto3Error as exc:  # S3UploadFailedError wraps the ClientError that explains it
        inner = exc.__context__
        raise (_client_error(what, inner) if isinstance(inner, ClientError) else S3Error(f"{what}: {exc}")) from exc
    except BotoCoreError as exc:  # endpoint unreachable, bad config, ...
        from botocore.exceptions import ConnectionError as BotoConnectionError

        raise (S3Unreachable if isinstance(exc, BotoConnectionError) else S3Error)(f"{what}: {exc}") from exc


def _client_error(what: str, exc) -> S3Error:
    err = exc.response.get("Error", {})
    code = str(err.get("Code", "error"))
    if code in ("404", "NoSuchKey", "NoSuchBucket"):  # HEAD requests carry no error body
        return S3Error(f"{what}: not found ({code}: no such bucket or key)")
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return S3CredentialsError(f"{what}: access denied ({code}): check the credentials")
    return S3Error(f"{what}: {code}: {err.get('Message', exc)}")


def upload_file(local: str | Path, url: str, endpoint_url: str | None = None) -> None:
    bucket, key = parse_url(url)
    _call(f"upload {local} -> {url}", client(endpoint_url).upload_file, str(local), bucket, key)


def download_file(url: str, local: str | Path, endpoint_url: str | None = None) -> Path:
    bucket, key = parse_url(url)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.partial")
    _call(f"download {url}", client(endpoint_url).download_file, bucket, key, str(tmp))
    tmp.replace(local)  # never a half file under the real name
    return local


def upload_dir(local_dir: str | Path, url: str, endpoint_url: str | None = None) -> int:
    """Upload every file under `local_dir` to `url`/<relative path>; returns the file count."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise S3Error(f"not a folder: {local_dir}")
    bucket, prefix = parse_url(url)
    s3 = client(endpoint_url)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    for path in files:
        key = "/".join(filter(None, [prefix, path.relative_to(local_dir).as_posix()]))
        _call(f"upload {path} -> s3://{bucket}/{key}", s3.upload_file, str(path), bucket, key)
    return len(files)


def list_keys(url: str, endpoint_url: str | None = None) -> list[str]:
    bucket, prefix = parse_url(url)
    s3 = client(endpoint_url)
    keys: list[str] = []
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else "")
    for page in _call(f"list {url}", list, pages):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


def download_dir(url: str, local_dir: str | Path, endpoint_url: str | None = None) -> int:
    """Download every object under `url` into `local_dir` (same relative layout)."""
    bucket, prefix = parse_url(url)
    keys = list_keys(url, endpoint_url)
    if not keys:
        raise S3Error(f"nothing under {url}")
    s3 = client(endpoint_url)
    local_dir = Path(local_dir)
    for key in keys:
        rel = key[len(prefix) :].lstrip("/") if prefix else key
        target = local_dir / rel
        if not target.resolve().is_relative_to(local_dir.resolve()):
            raise S3Error(f"refusing key outside the target folder: {key}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.partial")
        _call(f"download s3://{bucket}/{key}", s3.download_file, bucket, key, str(tmp))
        tmp.replace(target)
    return len(keys)

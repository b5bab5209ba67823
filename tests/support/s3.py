"""A real S3-compatible server for the tests: moto's standalone server run as a process of its
own on 127.0.0.1 (plain HTTP, or HTTPS with a certificate made here), a fresh bucket per test,
the credentials file markship reads, and boto3 to look at what was stored. The fixtures that
start them live in tests/conftest.py."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from markship.pg.scratch import chown_to, free_port
from tests.support.servers import OS_USER

# Distinctive on purpose: a test greps process lists, logs and JSON for them.
ACCESS_KEY_ID = "AKIAMARKSHIPCANARY07"
SECRET_ACCESS_KEY = "ms-canary-secret/Qx7Vb2Lp9Wz4Kt6Rj3Hn8Fd5"
REGION = "us-east-1"
PREFIX = "markship"

# A scenario run once on a directory and once on S3: `pg_group` reads `repository_kind`.
ON_FS_AND_S3 = pytest.mark.parametrize(
    "repository_kind", ["fs", pytest.param("s3", marks=pytest.mark.s3)])


def _answers(url: str, ca_file: Path | None) -> bool:
    import ssl

    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    try:
        with urllib.request.urlopen(url, timeout=2, context=context):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, even if with an error status
    except OSError:
        return False


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A private CA (`s3-ca.pem`, what a client trusts) and a certificate it signed for
    127.0.0.1 and localhost: (certificate, key) PEM files for the server."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
              issuer_key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None),
                                  critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = (builder
                       .add_extension(x509.SubjectAlternativeName([
                           x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                           x509.DNSName("localhost")]), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                      critical=False))
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = issue("markship test CA", ca_key, "markship test CA", ca_key, ca=True)
    cert = issue("127.0.0.1", key, "markship test CA", ca_key, ca=False)
    ca_path = directory / "s3-ca.pem"
    cert_path, key_path = directory / "s3-cert.pem", directory / "s3-key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    ca_path.chmod(0o644)  # markship reads it as the postgres user
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class S3Server:
    """moto's server, one process group of its own; `stop()` leaves nothing behind."""

    directory: Path
    port: int
    tls: bool = False
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        return self.directory / "s3-ca.pem" if self.tls else None

    @property
    def log(self) -> Path:
        return self.directory / f"moto-{self.port}.log"

    def start(self, timeout: float = 60) -> None:
        """Start the server on its port and wait until it answers."""
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        if self.tls:
            if not (self.directory / "s3-cert.pem").exists():
                make_certificate(self.directory)
            argv += ["-c", str(self.directory / "s3-cert.pem"),
                     "-k", str(self.directory / "s3-key.pem")]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        while not _answers(self.endpoint + "/moto-api/data.json", self.ca_file):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server on port {self.port} did not start: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 10 s; waits for it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # anything it started, still in its group
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def client(self, access_key: str = ACCESS_KEY_ID, secret: str = SECRET_ACCESS_KEY,
               service: str = "s3") -> Any:
        """A boto3 client talking to this server directly."""
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=access_key, aws_secret_access_key=secret,
                            verify=str(self.ca_file) if self.ca_file else True,
                            config=Config(retries={"max_attempts": 2}))


def start_s3_server(directory: Path | None = None, tls: bool = False,
                    env: dict[str, str] | None = None) -> S3Server:
    """moto's server on a free port of 127.0.0.1, answering (a few ports are tried: another
    process may take the free port first)."""
    directory = directory or Path(tempfile.mkdtemp(prefix="markship-s3-"))
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)  # the postgres user reads the CA file in it
    for attempt in range(3):
        server = S3Server(directory, free_port(), tls=tls, env=env or {})
        try:
            server.start()
            return server
        except RuntimeError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def write_credentials(path: Path, access_key: str = ACCESS_KEY_ID,
                      secret: str = SECRET_ACCESS_KEY) -> Path:
    """The credentials file of the [repository] config: 0600, owned by the postgres user
    (wal-push runs as it)."""
    path.write_text(f"AWS_ACCESS_KEY_ID={access_key}\nAWS_SECRET_ACCESS_KEY={secret}\n")
    path.chmod(0o600)
    chown_to(path, OS_USER)
    return path


@dataclass
class S3Store:
    """One bucket of an S3 server used as a group's repository (under PREFIX), and a way to
    look at it. `endpoint` is the one markship is given; it may differ from the server's
    (a proxy in between), boto3 always talks to the server itself."""

    server: S3Server
    bucket: str
    credentials_file: Path
    endpoint: str = ""
    prefix: str = PREFIX
    access_key: str = ACCESS_KEY_ID
    secret: str = SECRET_ACCESS_KEY
    kind: str = "s3"

    def __post_init__(self) -> None:
        self.endpoint = self.endpoint or self.server.endpoint
        self._client = self.server.client(self.access_key, self.secret)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def config_lines(self) -> str:
        """The location keys of the [repository] table."""
        text = (f'url = "{self.url}"\nendpoint = "{self.endpoint}"\nregion = "{REGION}"\n'
                f'credentials_file = "{self.credentials_file}"\n')
        if self.server.ca_file:
            text += f'ca_file = "{self.server.ca_file}"\n'
        return text

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def stored_keys(self, prefix: str = "") -> list[str]:
        """Every stored key starting with `prefix`, relative to the repository, sorted."""
        found: list[str] = []
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._full(prefix))
        for page in pages:
            found += [item["Key"][len(self.prefix) + 1:] for item in page.get("Contents", [])]
        return sorted(found)

    def read(self, key: str) -> bytes:
        data: bytes = self._client.get_object(Bucket=self.bucket, Key=self._full(key))[
            "Body"].read()
        return data

    def write(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    def uploads_in_progress(self) -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted."""
        listed = self._client.list_multipart_uploads(Bucket=self.bucket)
        return [u["Key"][len(self.prefix) + 1:] for u in listed.get("Uploads", [])]

    def drop(self) -> None:
        """Empty and delete the bucket (moto holds everything in memory)."""
        with contextlib.suppress(Exception):
            for upload in self._client.list_multipart_uploads(Bucket=self.bucket).get(
                    "Uploads", []):
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                    UploadId=upload["UploadId"])
            for key in self.stored_keys():
                self.delete(key)
            self._client.delete_bucket(Bucket=self.bucket)


def new_store(server: S3Server, directory: Path, endpoint: str = "",
              access_key: str = ACCESS_KEY_ID, secret: str = SECRET_ACCESS_KEY) -> S3Store:
    """A fresh bucket on `server` and a credentials file in `directory`."""
    bucket = f"ms-test-{uuid.uuid4().hex[:12]}"
    server.client(access_key, secret).create_bucket(Bucket=bucket)
    credentials = write_credentials(directory / "s3.env", access_key, secret)
    return S3Store(server, bucket, credentials, endpoint=endpoint, access_key=access_key,
                   secret=secret)


def require_signatures(server: S3Server) -> tuple[str, str]:
    """Make `server` check the signature of every request from now on (moto accepts any
    credentials otherwise); returns the access key id and secret of a user allowed
    everything. Applies to the whole server: use a server of the test's own."""
    import json

    iam = server.client(service="iam")
    iam.create_user(UserName="markship")
    iam.put_user_policy(UserName="markship", PolicyName="everything",
                        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                            {"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="markship")["AccessKey"]
    request = urllib.request.Request(server.endpoint + "/moto-api/reset-auth", data=b"0",
                                     method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10):
        pass
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])

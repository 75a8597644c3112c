"""mTLS material: the Croupier CA and this party's certificate and key.

``croupier certs init`` writes ``ca.pem`` plus one ``STEM.pem``/``STEM.key`` pair per identity
(``agent-<id>``, ``client-<name>``, ``admin-<name>``). Every channel the SDK opens presents the
certificate and trusts only the CA.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc


class TlsError(Exception):
    """The TLS files are missing or unreadable."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise TlsError(
            f"reading {path}: {e.strerror} (make certificates with `croupier certs init`)"
        ) from e


class Tls:
    """mTLS material: PEM bytes of the CA certificate, this party's certificate and its key.

    Made with :meth:`from_dir` or :meth:`from_pem`. ``Tls.from_dir("certs")`` without an
    identity defers the choice of certificate: an :class:`~croupier.Agent` then uses
    ``agent-<agent_id>``, a :class:`~croupier.Client` the directory's only ``client-*``
    certificate.
    """

    def __init__(
        self,
        ca: bytes | None = None,
        cert: bytes | None = None,
        key: bytes | None = None,
        *,
        directory: Path | None = None,
        identity: str | None = None,
    ) -> None:
        self.ca = ca
        self.cert = cert
        self._key = key
        self.directory = directory
        #: The certificate file stem (e.g. ``agent-logic-1``), when known.
        self.identity = identity

    def __repr__(self) -> str:
        return f"Tls(directory={self.directory!r}, identity={self.identity!r}, key=<redacted>)"

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str], identity: str | None = None) -> Tls:
        """``DIR/ca.pem``, ``DIR/IDENTITY.pem`` and ``DIR/IDENTITY.key`` (the layout of
        ``croupier certs init``). With an identity the files are read at once."""
        t = cls(directory=Path(directory).expanduser(), identity=identity)
        return t.resolved(identity) if identity else t

    @classmethod
    def from_pem(cls, ca: bytes | str, cert: bytes | str, key: bytes | str) -> Tls:
        """Material held in memory (e.g. from a secret store)."""

        def b(x: bytes | str) -> bytes:
            return x.encode() if isinstance(x, str) else x

        return cls(ca=b(ca), cert=b(cert), key=b(key))

    @property
    def loaded(self) -> bool:
        """True when the PEM bytes are in memory."""
        return self.ca is not None and self.cert is not None and self._key is not None

    def resolved(self, default_identity: str | None = None, prefix: str = "client-") -> Tls:
        """This material with its files read: the identity given to :meth:`from_dir`, else
        ``default_identity``, else the directory's only certificate whose stem starts with
        ``prefix``."""
        if self.loaded:
            return self
        if self.directory is None:
            raise TlsError("no TLS material: use Tls.from_dir or Tls.from_pem")
        d = self.directory
        identity = self.identity or default_identity
        if identity is None:
            stems = sorted(
                p.stem for p in d.glob(f"{prefix}*.pem") if (d / f"{p.stem}.key").exists()
            )
            if len(stems) != 1:
                raise TlsError(
                    f"{d}: cannot tell which certificate to use among {stems or 'none'}; "
                    f"pass identity=, e.g. {prefix}NAME"
                )
            identity = stems[0]
        return Tls(
            _read(d / "ca.pem"),
            _read(d / f"{identity}.pem"),
            _read(d / f"{identity}.key"),
            directory=d,
            identity=identity,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials presenting this certificate and trusting only the CA."""
        t = self.resolved()
        return grpc.ssl_channel_credentials(
            root_certificates=t.ca, private_key=t._key, certificate_chain=t.cert
        )


def target_of(server: str) -> str:
    """``https://host:port`` (or ``host:port``) as a gRPC target ``host:port``."""
    s = server.strip().rstrip("/")
    for prefix in ("https://", "grpcs://"):
        if s.startswith(prefix):
            return s[len(prefix) :]
    if "://" in s:
        raise ValueError(f"{server}: Croupier servers speak TLS only; use https://HOST:PORT")
    return s

//! The TLS options every networked backend reads the same way: `tls`,
//! `ca_file`, `cert_file` and `key_file`, and the PEM files they name.
//!
//! * `ca_file` — PEM file with the CA certificate(s) the server's
//!   certificate must chain to (default: the system's roots).
//! * `cert_file` + `key_file` — PEM client certificate (chain) and its
//!   private key, for servers that ask for one; always given together.
//! * Any of them turns TLS on. `tls=true` turns it on with the system's
//!   roots and no client certificate; `tls=false` with any of them is an
//!   error. (Redis turns TLS on with the `rediss://` scheme instead.)
//!
//! Files are read when the store is opened (and by
//! [`validate`](crate::url::validate) for the backends that read them at
//! that point). A missing or unreadable file is an
//! [`Error::InvalidUrl`] naming the option and the path; the contents of a
//! key file never appear in an error, `Debug` or `Display`.

#![cfg_attr(
    not(any(
        feature = "etcd",
        feature = "consul",
        feature = "redis",
        feature = "zookeeper"
    )),
    allow(dead_code)
)]

use std::fmt;
use std::path::{Path, PathBuf};

use super::StoreUrl;
use crate::error::{Error, Result};

/// How a backend turns TLS on besides the file options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsSwitch {
    /// By the URL scheme (`rediss://`): `true` if the scheme asked for TLS.
    /// There is no `tls` option; a file option on the plain scheme is an
    /// error that names the TLS scheme.
    Scheme {
        /// Whether the scheme is the TLS one.
        on: bool,
        /// The TLS scheme, for the error message.
        tls_scheme: &'static str,
    },
    /// By the `tls` option (or any file option).
    Option,
}

/// The TLS settings of a URL, paths not read yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsPaths {
    /// `ca_file`.
    pub(crate) ca_file: Option<PathBuf>,
    /// `cert_file` and `key_file`, which go together.
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
}

/// The TLS material read from the files of [`TlsPaths`].
#[derive(Clone, Default)]
pub(crate) struct TlsFiles {
    /// PEM CA certificate(s), if `ca_file` was given.
    pub(crate) ca: Option<Vec<u8>>,
    /// The client certificate and key, if given.
    pub(crate) identity: Option<ClientIdentity>,
}

impl fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.as_ref().map(|_| "PEM"))
            .field("identity", &self.identity)
            .finish()
    }
}

/// A PEM client certificate (chain) and its private key.
#[derive(Clone)]
pub(crate) struct ClientIdentity {
    /// The certificate chain, PEM.
    pub(crate) cert: Vec<u8>,
    key: SecretPem,
}

impl ClientIdentity {
    /// The private key, PEM. A secret: never log or show it.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key.0
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert", &"PEM")
            .field("key", &"***")
            .finish()
    }
}

/// Key material: shown as `***`, overwritten when dropped.
#[derive(Clone)]
struct SecretPem(Vec<u8>);

impl Drop for SecretPem {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
    }
}

impl TlsPaths {
    /// Whether any file option was given.
    pub(crate) fn any(&self) -> bool {
        self.ca_file.is_some() || self.identity.is_some()
    }

    /// Reads the files. Errors are [`Error::InvalidUrl`] for `url` (already
    /// redacted) naming the option and the path, never a file's contents.
    pub(crate) fn read(&self, url: &str) -> Result<TlsFiles> {
        let ca = match &self.ca_file {
            None => None,
            Some(path) => Some(read_pem(url, "ca_file", path, Expect::Certificate)?),
        };
        let identity = match &self.identity {
            None => None,
            Some((cert, key)) => Some(ClientIdentity {
                cert: read_pem(url, "cert_file", cert, Expect::Certificate)?,
                key: SecretPem(read_pem(url, "key_file", key, Expect::PrivateKey)?),
            }),
        };
        Ok(TlsFiles { ca, identity })
    }
}

#[derive(Clone, Copy)]
enum Expect {
    Certificate,
    PrivateKey,
}

fn read_pem(url: &str, option: &str, path: &Path, expect: Expect) -> Result<Vec<u8>> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: url.to_owned(),
        reason: format!("option `{option}`: {reason}"),
    };
    // A few KiB read once at open; not worth a blocking-pool hop.
    let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read {path:?}: {e}")))?;
    // Only markers are looked for, and only the path is named: a key
    // file's bytes never reach a message.
    let (marker, what) = match expect {
        Expect::Certificate => (&b"-----BEGIN CERTIFICATE-----"[..], "a PEM certificate"),
        Expect::PrivateKey => (&b"PRIVATE KEY-----"[..], "a PEM private key"),
    };
    if !pem.windows(marker.len()).any(|w| w == marker) {
        let mut pem = pem;
        pem.iter_mut().for_each(|b| *b = 0);
        return Err(invalid(format!("{path:?} does not hold {what}")));
    }
    Ok(pem)
}

/// What a failed TLS handshake was about, as the TLS library's messages
/// (rustls', through each client library) tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// The server's certificate does not chain to a trusted CA, or does not
    /// name the host (check `ca_file`).
    ServerNotTrusted,
    /// The server refused our client certificate or its absence (check
    /// `cert_file` / `key_file`).
    ClientRefused,
}

/// The alerts a server sends when it does not accept the client's
/// certificate, in rustls' `Display` and `Debug` spellings.
const CLIENT_REFUSED_ALERTS: &[&str] = &[
    "CertificateRequired",
    "BadCertificate",
    "UnknownCA",
    "CertificateUnknown",
    "CertificateExpired",
    "CertificateRevoked",
    "UnsupportedCertificate",
    "AccessDenied",
];

/// Reads `err` and its sources (their `Display` and `Debug`) for a failed
/// TLS handshake.
pub(crate) fn handshake_failure(
    err: &(dyn std::error::Error + 'static),
) -> Option<HandshakeFailure> {
    let mut next = Some(err);
    while let Some(e) = next {
        for text in [e.to_string(), format!("{e:?}")] {
            if text.contains("invalid peer certificate") || text.contains("InvalidCertificate(") {
                return Some(HandshakeFailure::ServerNotTrusted);
            }
            let alert = ["received fatal alert: ", "AlertReceived("]
                .iter()
                .filter_map(|prefix| text.split_once(prefix).map(|(_, rest)| rest))
                .any(|rest| CLIENT_REFUSED_ALERTS.iter().any(|a| rest.starts_with(a)));
            if alert {
                return Some(HandshakeFailure::ClientRefused);
            }
        }
        next = e.source();
    }
    None
}

impl StoreUrl {
    /// Removes the TLS options (`tls` only with [`TlsSwitch::Option`]) and
    /// checks that they fit together. `None`: plain connections.
    pub(crate) fn take_tls(&mut self, switch: TlsSwitch) -> Result<Option<TlsPaths>> {
        let ca_file = self.take("ca_file").map(PathBuf::from);
        let cert_file = self.take("cert_file").map(PathBuf::from);
        let key_file = self.take("key_file").map(PathBuf::from);
        let identity = match (cert_file, key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(
                    self.invalid("option `cert_file` needs `key_file` (the client key)".into())
                )
            }
            (None, Some(_)) => {
                return Err(self.invalid(
                    "option `key_file` needs `cert_file` (the client certificate)".into(),
                ))
            }
        };
        let paths = TlsPaths { ca_file, identity };
        let first_file = if paths.ca_file.is_some() {
            "ca_file"
        } else {
            "cert_file"
        };
        let on = match switch {
            TlsSwitch::Scheme { on, tls_scheme } => {
                if !on && paths.any() {
                    return Err(self.invalid(format!(
                        "option `{first_file}` needs TLS: use {tls_scheme}:// instead of {}://",
                        self.scheme
                    )));
                }
                on
            }
            TlsSwitch::Option => match self.take_bool("tls")? {
                Some(false) if paths.any() => {
                    return Err(self.invalid(format!("`{first_file}` needs TLS but `tls=false`")))
                }
                Some(on) => on,
                None => paths.any(),
            },
        };
        Ok(on.then_some(paths))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(url: &str, switch: TlsSwitch) -> Result<Option<TlsPaths>> {
        let mut u = StoreUrl::parse(url)?;
        let tls = u.take_tls(switch)?;
        u.finish()?;
        Ok(tls)
    }

    #[test]
    fn options_turn_tls_on_and_pair_up() {
        let opt = TlsSwitch::Option;
        assert_eq!(take("etcd://h/", opt).unwrap(), None);
        assert_eq!(take("etcd://h/?tls=false", opt).unwrap(), None);
        assert_eq!(
            take("etcd://h/?tls=true", opt).unwrap(),
            Some(TlsPaths::default())
        );
        let t = take("etcd://h/?ca_file=/a&cert_file=/b&key_file=/c", opt)
            .unwrap()
            .unwrap();
        assert_eq!(t.ca_file.as_deref(), Some(Path::new("/a")));
        assert_eq!(t.identity, Some((PathBuf::from("/b"), PathBuf::from("/c"))));
        for bad in [
            "etcd://h/?cert_file=/b",
            "etcd://h/?key_file=/c",
            "etcd://h/?tls=false&ca_file=/a",
            "etcd://h/?tls=maybe",
        ] {
            assert!(
                matches!(take(bad, opt), Err(Error::InvalidUrl { .. })),
                "{bad} accepted"
            );
        }
        let scheme = |on| TlsSwitch::Scheme {
            on,
            tls_scheme: "rediss",
        };
        let err = take("redis://h/?cert_file=/b&key_file=/c", scheme(false)).unwrap_err();
        assert!(err.to_string().contains("rediss://"), "{err}");
        // No `tls` option where the scheme decides.
        assert!(take("redis://h/?tls=true", scheme(false)).is_err());
        assert!(take("rediss://h/", scheme(true)).unwrap().is_some());
    }

    #[test]
    fn handshake_failures_are_told_apart() {
        let io = |msg: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_owned());
        assert_eq!(
            handshake_failure(&io("invalid peer certificate: UnknownIssuer")),
            Some(HandshakeFailure::ServerNotTrusted)
        );
        for refused in [
            "received fatal alert: CertificateRequired",
            "received fatal alert: BadCertificate",
        ] {
            assert_eq!(
                handshake_failure(&io(refused)),
                Some(HandshakeFailure::ClientRefused)
            );
        }
        assert_eq!(
            handshake_failure(&io("received fatal alert: ProtocolVersion")),
            None
        );
        assert_eq!(handshake_failure(&io("connection refused")), None);
    }

    #[test]
    fn unreadable_or_wrong_files_name_the_option_and_path_never_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("client.key");
        std::fs::write(&key, "not a key: hunter2").unwrap();
        let cert = dir.path().join("client.pem");
        std::fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let paths = TlsPaths {
            ca_file: None,
            identity: Some((cert.clone(), key.clone())),
        };
        let err = paths.read("etcd://h/?key_file=***").unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("key_file"), "{shown}");
        assert!(shown.contains("client.key"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");

        let missing = TlsPaths {
            ca_file: Some(dir.path().join("nope.pem")),
            identity: None,
        };
        let err = missing.read("etcd://h/").unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
        assert!(
            err.to_string().contains("ca_file") && err.to_string().contains("nope.pem"),
            "{err}"
        );

        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nhunter2\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let files = paths.read("etcd://h/").unwrap();
        let shown = format!("{files:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(files
            .identity
            .is_some_and(|i| i.key().ends_with(b"-----\n")));
    }
}

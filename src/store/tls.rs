//! TLS of the links to PostgreSQL and Redis.
//!
//! tokio-postgres parses only `sslmode=disable|prefer|require` and no `sslrootcert`, and
//! verifies nothing itself, so the TLS options of a PostgreSQL URL are taken out of it
//! here ([`split_pg_url`]) and turned into a connector with libpq's meanings
//! ([`PgTls::connector`]):
//!
//! | `sslmode`     | encrypted            | chain checked          | host name checked |
//! |---------------|----------------------|------------------------|-------------------|
//! | `disable`     | no                   | –                      | –                 |
//! | `prefer`      | if the server offers | only with `sslrootcert`| no                |
//! | `require`     | yes                  | only with `sslrootcert`| no                |
//! | `verify-ca`   | yes                  | yes                    | no                |
//! | `verify-full` | yes                  | yes                    | yes               |
//!
//! As in libpq, `prefer` is the default and a given root certificate turns on the chain
//! check even under `prefer`/`require`. A `verify-*` mode without `sslrootcert` (or
//! with `sslrootcert=system`) trusts the system's roots; with a file it trusts that
//! file alone.
//!
//! One TLS stack serves both links: native-tls, i.e. the system's OpenSSL, through
//! `postgres-native-tls` and fred's `enable-native-tls`. It adds the least to a clean
//! build (a few small crates binding a library already built, against rustls with ring,
//! whose C and assembly are compiled, or aws-lc, minutes of it), and the system's
//! OpenSSL gets the distribution's security updates. The price is `libssl-dev` and
//! `pkg-config` at build time and `libssl3` at run time.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why TLS settings cannot be used; the caller names the setting they came from.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TlsError {
    /// `sslmode` has a value libpq does not know.
    #[error("sslmode={0} is not one of disable, prefer, require, verify-ca, verify-full")]
    UnknownMode(String),
    /// `sslrootcert` is empty.
    #[error("sslrootcert is empty")]
    EmptyRootCert,
    /// `sslrootcert=system` with a mode weaker than `verify-full`, which libpq refuses
    /// because the public roots vouch for names, not for servers.
    #[error("sslrootcert=system needs sslmode=verify-full, not {0}")]
    SystemRootsNeedVerifyFull(&'static str),
    /// A percent escape of the URL is broken.
    #[error("a percent escape in the URL's {0} is not valid UTF-8 hex")]
    BadEscape(&'static str),
    /// A quoted value of a key=value connection string is not closed.
    #[error("a quoted value is not closed")]
    UnclosedQuote,
    /// The CA file cannot be read.
    #[error("cannot read the CA file {path}: {reason}")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The IO error.
        reason: String,
    },
    /// The CA file holds no PEM certificate.
    #[error("the CA file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    /// OpenSSL refused to build the connector.
    #[error("cannot set up TLS: {0}")]
    Build(String),
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never encrypt.
    Disable,
    /// Encrypt when the server offers it (libpq's default).
    #[default]
    Prefer,
    /// Always encrypt; verify only against a given root certificate.
    Require,
    /// Encrypt and check the certificate chain, not the host name.
    VerifyCa,
    /// Encrypt and check the chain and that the certificate names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, TlsError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => return Err(TlsError::UnknownMode(other.to_owned())),
        })
    }

    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether to ask for TLS, and whether a refusal is
    /// fatal (verification is the connector's business).
    pub fn wire(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as Wire;
        match self {
            Self::Disable => Wire::Disable,
            Self::Prefer => Wire::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Wire::Require,
        }
    }
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Roots {
    /// None given: the system's roots, used only by the `verify-*` modes.
    #[default]
    Unset,
    /// `sslrootcert=system`: the system's roots.
    System,
    /// `sslrootcert=<path>`: this PEM file alone.
    File(PathBuf),
}

/// The TLS settings of one PostgreSQL URL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PgTls {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`.
    pub roots: Roots,
}

/// What a connector checks, derived from [`PgTls`] with libpq's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Whether the certificate chain must lead to a trusted root.
    pub chain: bool,
    /// Whether the certificate must name the host connected to.
    pub host: bool,
    /// The only roots trusted; `None` for the system's.
    pub ca_file: Option<PathBuf>,
}

impl PgTls {
    /// Checks the combination and says what the connector must verify.
    pub fn verification(&self) -> Result<Verification, TlsError> {
        let ca_file = match &self.roots {
            Roots::File(path) => Some(path.clone()),
            Roots::Unset | Roots::System => None,
        };
        if self.roots == Roots::System && self.mode != SslMode::VerifyFull {
            return Err(TlsError::SystemRootsNeedVerifyFull(self.mode.as_str()));
        }
        let strict = matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull);
        Ok(Verification {
            chain: strict || ca_file.is_some(),
            host: self.mode == SslMode::VerifyFull,
            ca_file,
        })
    }

    /// The connector for a pool. Under `disable` it is never used, but a pool still
    /// needs one of a single type.
    pub fn connector(&self) -> Result<postgres_native_tls::MakeTlsConnector, TlsError> {
        let v = self.verification()?;
        let mut builder = native_tls::TlsConnector::builder();
        builder
            .danger_accept_invalid_certs(!v.chain)
            .danger_accept_invalid_hostnames(!v.host);
        if let Some(path) = &v.ca_file {
            trust_only(&mut builder, path)?;
        }
        let connector = builder
            .build()
            .map_err(|e| TlsError::Build(e.to_string()))?;
        Ok(postgres_native_tls::MakeTlsConnector::new(connector))
    }
}

/// A connector for `rediss://`: chain and host name always checked, against `ca_file`
/// alone when given, the system's roots otherwise.
pub fn redis_connector(ca_file: Option<&Path>) -> Result<native_tls::TlsConnector, TlsError> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = ca_file {
        trust_only(&mut builder, path)?;
    }
    builder.build().map_err(|e| TlsError::Build(e.to_string()))
}

/// Makes `builder` trust the certificates of the PEM file at `path` and nothing else.
fn trust_only(builder: &mut native_tls::TlsConnectorBuilder, path: &Path) -> Result<(), TlsError> {
    for cert in read_ca(path)? {
        builder.add_root_certificate(cert);
    }
    builder.disable_built_in_roots(true);
    Ok(())
}

/// Every certificate of a PEM bundle (managed databases ship several roots in one).
pub fn read_ca(path: &Path) -> Result<Vec<native_tls::Certificate>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::ReadCa {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let certs = native_tls::Certificate::stack_from_pem(&pem).map_err(|e| TlsError::ReadCa {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// Takes `sslmode` and `sslrootcert` out of a PostgreSQL connection string, URL
/// (`postgres://…?sslmode=…`) or key=value (`host=… sslmode=…`), and returns the rest,
/// for tokio-postgres to parse, with the TLS settings they stated.
pub fn split_pg_url(url: &str) -> Result<(String, PgTls), TlsError> {
    let trimmed = url.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        split_uri(trimmed)
    } else {
        split_key_values(trimmed)
    }
}

fn split_uri(url: &str) -> Result<(String, PgTls), TlsError> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), PgTls::default()));
    };
    let mut mode = None;
    let mut root = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(key, "query")?.as_str() {
            "sslmode" => mode = Some(decode(value, "sslmode")?),
            "sslrootcert" => root = Some(decode(value, "sslrootcert")?),
            _ => kept.push(pair),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, settings(mode, root)?))
}

fn split_key_values(s: &str) -> Result<(String, PgTls), TlsError> {
    let mut mode = None;
    let mut root = None;
    let mut kept: Vec<&str> = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let (pair, key, value, after) = next_pair(rest)?;
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => kept.push(pair),
        }
        rest = after;
    }
    Ok((kept.join(" "), settings(mode, root)?))
}

/// One `key = value` of a libpq connection string: the pair's text as written, the key,
/// the unquoted value, and what follows. Anything malformed other than an open quote is
/// kept for tokio-postgres to refuse.
fn next_pair(s: &str) -> Result<(&str, String, String, &str), TlsError> {
    let key_end = s
        .find(|c: char| c == '=' || c.is_whitespace())
        .unwrap_or(s.len());
    let key = s[..key_end].to_owned();
    let after_key = s[key_end..].trim_start();
    let Some(after_eq) = after_key.strip_prefix('=') else {
        // No '=': keep the word as it is.
        return Ok((&s[..key_end], key, String::new(), &s[key_end..]));
    };
    let value_src = after_eq.trim_start();
    let value_start = s.len() - value_src.len();
    let mut value = String::new();
    let mut chars = value_src.char_indices();
    let end = if value_src.starts_with('\'') {
        chars.next();
        let mut closed = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '\'' => {
                    closed = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        closed.ok_or(TlsError::UnclosedQuote)?
    } else {
        let mut end = value_src.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                c if c.is_whitespace() => {
                    end = i;
                    break;
                }
                c => value.push(c),
            }
        }
        end
    };
    let pair_end = value_start + end;
    Ok((&s[..pair_end], key, value, &s[pair_end..]))
}

fn settings(mode: Option<String>, root: Option<String>) -> Result<PgTls, TlsError> {
    let roots = match root.as_deref() {
        None => Roots::Unset,
        Some("") => return Err(TlsError::EmptyRootCert),
        Some("system") => Roots::System,
        Some(path) => Roots::File(PathBuf::from(path)),
    };
    let mode = match mode.as_deref() {
        Some(m) => SslMode::parse(m)?,
        // libpq: sslrootcert=system alone means verify-full.
        None if roots == Roots::System => SslMode::VerifyFull,
        None => SslMode::default(),
    };
    let tls = PgTls { mode, roots };
    tls.verification()?;
    Ok(tls)
}

/// Percent-decodes one part of a URL's query.
fn decode(s: &str, part: &'static str) -> Result<String, TlsError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(TlsError::BadEscape(part))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| TlsError::BadEscape(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, PgTls) {
        split_pg_url(url).expect("valid")
    }

    // Guards against the TLS options reaching tokio-postgres (which refuses verify-*)
    // or the other options being lost on the way.
    #[test]
    fn uri_options_are_taken_out_and_the_rest_kept() {
        let (rest, tls) = split(
            "postgres://u:p@db:5432/surge?application_name=x&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca%20dir%2Froot.pem&connect_timeout=3",
        );
        assert_eq!(
            rest,
            "postgres://u:p@db:5432/surge?application_name=x&connect_timeout=3"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.roots, Roots::File("/etc/ca dir/root.pem".into()));
        let (rest, tls) = split("postgresql://db/surge?sslmode=require");
        assert_eq!(rest, "postgresql://db/surge");
        assert_eq!(
            tls,
            PgTls {
                mode: SslMode::Require,
                roots: Roots::Unset
            }
        );
        // The rest parses as tokio-postgres expects.
        assert!(rest.parse::<tokio_postgres::Config>().is_ok());
    }

    // Guards against the key=value form (also accepted by tokio-postgres) ignoring or
    // mangling the TLS options, quoted values included.
    #[test]
    fn key_value_options_are_taken_out_and_the_rest_kept() {
        let (rest, tls) = split(
            "host=db dbname=surge sslmode = verify-ca sslrootcert='/a b/c\\'s.pem' \
             password='x y'",
        );
        assert_eq!(rest, "host=db dbname=surge password='x y'");
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(tls.roots, Roots::File("/a b/c's.pem".into()));
        let cfg: tokio_postgres::Config = rest.parse().expect("rest parses");
        assert_eq!(cfg.get_password(), Some(&b"x y"[..]));
        assert_eq!(
            split_pg_url("host=db sslrootcert='/open"),
            Err(TlsError::UnclosedQuote)
        );
    }

    // Guards against a default other than libpq's: no sslmode means prefer, and
    // prefer without a root certificate must not refuse a self-signed server.
    #[test]
    fn no_options_mean_prefer_without_verification() {
        let (rest, tls) = split("postgres://db/surge");
        assert_eq!(rest, "postgres://db/surge");
        assert_eq!(tls, PgTls::default());
        assert_eq!(tls.mode, SslMode::Prefer);
        let v = tls.verification().expect("ok");
        assert!(!v.chain && !v.host);
    }

    // Guards the mapping itself: what each mode encrypts and verifies, as libpq does.
    #[test]
    fn each_mode_verifies_what_libpq_verifies() {
        let file = Roots::File("/ca.pem".into());
        let cases = [
            (SslMode::Disable, Roots::Unset, false, false),
            (SslMode::Prefer, Roots::Unset, false, false),
            (SslMode::Prefer, file.clone(), true, false),
            (SslMode::Require, Roots::Unset, false, false),
            // libpq: with a root certificate, require behaves like verify-ca.
            (SslMode::Require, file.clone(), true, false),
            (SslMode::VerifyCa, Roots::Unset, true, false),
            (SslMode::VerifyCa, file.clone(), true, false),
            (SslMode::VerifyFull, Roots::Unset, true, true),
            (SslMode::VerifyFull, file.clone(), true, true),
            (SslMode::VerifyFull, Roots::System, true, true),
        ];
        for (mode, roots, chain, host) in cases {
            let v = PgTls {
                mode,
                roots: roots.clone(),
            }
            .verification()
            .expect("valid");
            assert_eq!((v.chain, v.host), (chain, host), "{mode:?} {roots:?}");
            assert_eq!(v.ca_file.is_some(), matches!(roots, Roots::File(_)));
        }
        use tokio_postgres::config::SslMode as Wire;
        assert_eq!(SslMode::Disable.wire(), Wire::Disable);
        assert_eq!(SslMode::Prefer.wire(), Wire::Prefer);
        for strict in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(
                strict.wire(),
                Wire::Require,
                "{strict:?} must not fall back to plain"
            );
        }
    }

    // Guards against a typo in sslmode silently meaning something weaker, and against
    // sslrootcert=system being accepted where libpq refuses it.
    #[test]
    fn bad_combinations_are_refused() {
        assert_eq!(
            split_pg_url("postgres://db/s?sslmode=verify_full"),
            Err(TlsError::UnknownMode("verify_full".into()))
        );
        assert_eq!(
            split_pg_url("postgres://db/s?sslmode=require&sslrootcert=system"),
            Err(TlsError::SystemRootsNeedVerifyFull("require"))
        );
        let (_, tls) = split("postgres://db/s?sslrootcert=system");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(
            split_pg_url("postgres://db/s?sslrootcert="),
            Err(TlsError::EmptyRootCert)
        );
        assert_eq!(
            split_pg_url("postgres://db/s?sslrootcert=%zz"),
            Err(TlsError::BadEscape("sslrootcert"))
        );
    }

    // Guards against a missing or empty CA file being taken as "trust nothing special"
    // (or as the system roots) instead of an error at startup.
    #[test]
    fn an_unreadable_or_empty_ca_file_is_an_error() {
        let missing = PgTls {
            mode: SslMode::VerifyFull,
            roots: Roots::File("/nonexistent/ca.pem".into()),
        };
        assert!(matches!(missing.connector(), Err(TlsError::ReadCa { .. })));
        let empty = std::env::temp_dir().join(format!("surge-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let result = read_ca(&empty).map(|certs| certs.len());
        let _ = std::fs::remove_file(&empty);
        assert!(
            matches!(result, Err(TlsError::NoCertificate(_))),
            "{result:?}"
        );
    }
}

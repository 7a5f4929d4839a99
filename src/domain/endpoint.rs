//! URLs of the services reverify talks to: how they are shown, and which are
//! allowed.
//!
//! Two rules, used wherever a URL enters (the settings, a campaign file) or leaves
//! (a message, a log line, a `Debug` impl):
//!
//! - [`redact_url`]: the password in the userinfo and the value of every query
//!   parameter whose key names a secret ([`is_secret_key`]: `password`,
//!   `sslpassword`, `secret`, `token`, ...) become `***`, even when the URL does not
//!   parse.
//! - [`require_https`]: a URL that carries something worth protecting (the Baanx
//!   client key and bearer tokens, a session link) must be `https`, except to the
//!   loopback interface (`127.0.0.0/8`, `::1`, `localhost`), where the sandbox and
//!   test servers live.

use std::net::{IpAddr, Ipv6Addr};

/// What replaces a secret in a shown URL.
const MASK: &str = "***";

/// Where `audit_anchor` points: `file:///ABSOLUTE` (an append-only file), or the
/// syslog socket (`syslog` for `/dev/log`, `syslog:///SOCKET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorTarget {
    File(std::path::PathBuf),
    Syslog(std::path::PathBuf),
}

/// Parses `audit_anchor`; the error says what is accepted.
///
/// # Errors
/// A message naming the value.
pub fn parse_anchor(s: &str) -> Result<AnchorTarget, String> {
    let s = s.trim();
    let refused = || format!("{s:?}: use file:///PATH (an absolute path), syslog, or syslog:///SOCKET");
    if s == "syslog" || s == "syslog://" {
        return Ok(AnchorTarget::Syslog("/dev/log".into()));
    }
    let (scheme, rest) = s.split_once("://").ok_or_else(refused)?;
    let path = std::path::Path::new(rest);
    if !path.is_absolute() || rest.contains('?') || rest.contains('#') {
        return Err(refused());
    }
    match scheme {
        "file" => Ok(AnchorTarget::File(path.to_path_buf())),
        "syslog" => Ok(AnchorTarget::Syslog(path.to_path_buf())),
        _ => Err(refused()),
    }
}

/// True when a query parameter's key names a secret: it contains `password`,
/// `secret` or `token` (any case), like `password`, `sslpassword`, `client_secret`,
/// `access_token`.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token"].iter().any(|w| k.contains(w))
}

/// The URL with its password and every secret query value replaced by `***`, for
/// messages and logs. A string that does not parse as a URL is masked the same way
/// by its text (everything before the last `@` of the authority but the user name,
/// and the values of secret-looking `key=value` pairs).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url.trim()) {
        Ok(u) => redact_parsed(&u),
        Err(_) => redact_text(url),
    }
}

fn redact_parsed(u: &url::Url) -> String {
    let mut u = u.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some(MASK));
    }
    if u.query_pairs().any(|(k, _)| is_secret_key(&k)) {
        // rebuild the query by hand: keys and other values stay as they were written
        let query: Vec<String> = u
            .query()
            .unwrap_or_default()
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret_key(&decoded(k)) => format!("{k}={MASK}"),
                _ => pair.to_owned(),
            })
            .collect();
        u.set_query(Some(&query.join("&")));
    }
    u.to_string()
}

fn decoded(s: &str) -> String {
    url::form_urlencoded::parse(format!("k={s}").as_bytes())
        .next()
        .map_or_else(|| s.to_owned(), |(_, v)| v.into_owned())
}

/// [`redact_url`] for text that is not a URL (a typo, a bad port): masks by shape.
fn redact_text(text: &str) -> String {
    let (scheme, rest) = match text.find("://") {
        Some(i) => text.split_at(i + 3),
        None => ("", text),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{MASK}@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((q, f)) => (q, Some(f)),
                None => (query, None),
            };
            let masked: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_secret_key(k) => format!("{k}={MASK}"),
                    _ => pair.to_owned(),
                })
                .collect();
            let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
            format!("{path}?{}{fragment}", masked.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

/// True for a host on the loopback interface: `localhost`, `127.0.0.0/8` and `::1`.
pub fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.trim_end_matches('.').eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip == Ipv6Addr::LOCALHOST,
        None => false,
    }
}

/// `Ok` for an `https` URL, or an `http` one to the loopback interface; else a
/// message (without the URL's secrets) saying why.
///
/// # Errors
/// The reason, to put after the setting's or field's name.
pub fn require_https(u: &url::Url) -> Result<(), String> {
    match u.scheme() {
        "https" if u.host().is_some() => Ok(()),
        "http" if is_loopback(u) => Ok(()),
        "http" => Err(format!(
            "{} must use https (plain http is only allowed to 127.0.0.0/8, ::1 or localhost)",
            redact_parsed(u)
        )),
        _ => Err(format!("{} is not an https URL", redact_parsed(u))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secret_query_values_are_masked() {
        let cases = [
            ("postgres://u:secret@h/db", "postgres://u:***@h/db"),
            ("postgres://u@h/db?password=hunter2", "postgres://u@h/db?password=***"),
            (
                "postgres://u@h/db?sslmode=require&sslpassword=hunter2&application_name=x",
                "postgres://u@h/db?sslmode=require&sslpassword=***&application_name=x",
            ),
            (
                "https://pgw:9091/?Client_Secret=a&x=1&access_token=b",
                "https://pgw:9091/?Client_Secret=***&x=1&access_token=***",
            ),
            (
                "smtp://mailer:pw@smtp.example.com:587?tls=starttls",
                "smtp://mailer:***@smtp.example.com:587?tls=starttls",
            ),
            ("sqlite://reverify.db?mode=rwc", "sqlite://reverify.db?mode=rwc"),
            ("https://api.baanx.com/", "https://api.baanx.com/"),
        ];
        for (raw, shown) in cases {
            assert_eq!(redact_url(raw), shown, "{raw}");
        }
    }

    #[test]
    fn text_that_is_not_a_url_is_masked_by_shape() {
        // a bad port: url cannot parse it, the password must still go
        let shown = redact_url("postgres://u:hunter2@db:notaport/x?token=abc&sslmode=require");
        assert!(!shown.contains("hunter2") && !shown.contains("abc"), "{shown}");
        assert_eq!(shown, "postgres://u:***@db:notaport/x?token=***&sslmode=require");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn https_or_loopback() {
        for ok in [
            "https://api.baanx.com",
            "http://127.0.0.1:8787",
            "http://127.3.4.5/x",
            "http://[::1]:9/hook",
            "http://localhost:8080",
            "http://LOCALHOST./",
        ] {
            assert!(require_https(&url::Url::parse(ok).unwrap()).is_ok(), "{ok}");
        }
        for bad in ["http://api.baanx.com", "http://10.0.0.1/hook", "http://[::2]/", "ftp://x/", "http://128.0.0.1/"] {
            assert!(require_https(&url::Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
        let e = require_https(&url::Url::parse("http://u:pw@example.com/?token=t").unwrap()).unwrap_err();
        assert!(e.contains("https") && !e.contains("pw") && !e.contains("=t"), "{e}");
    }
}

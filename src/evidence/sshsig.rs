//! SSH signatures (SSHSIG, namespace `reverify`) over an evidence bundle's
//! `manifest.json`, through the RustCrypto `ssh-key` crate: the same format as
//! `ssh-keygen -Y sign -n reverify` and `ssh-keygen -Y verify`, so that an auditor
//! can check a bundle with OpenSSH alone.
//!
//! Decisions:
//! - Keys are OpenSSH files (`ssh-keygen -t ed25519`), not encrypted (the worker has
//!   no one to ask for a passphrase); the key types are the ones `ssh-key` is built
//!   with here: Ed25519.
//! - Signatures hash with SHA-512, as `ssh-keygen` does.
//! - `allowed_signers` (the format git uses, `ssh-keygen -Y verify -f`): principals,
//!   optional options, the key. `namespaces="…"` is honoured (a line that lists
//!   namespaces without `reverify` does not vouch for a bundle); `cert-authority`
//!   lines are refused (certificates are not supported); `valid-after` and
//!   `valid-before` are not checked, as a bundle carries no trusted signing time.

use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

/// The SSHSIG namespace of every reverify signature.
pub const NAMESPACE: &str = "reverify";

/// A signing key, read from `evidence_signing_key`.
pub struct SigningKey(PrivateKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.fingerprint())
    }
}

impl SigningKey {
    /// Parses an OpenSSH private key (the file's text).
    ///
    /// # Errors
    /// A message: not a key, encrypted.
    pub fn from_openssh(text: &str) -> Result<Self, String> {
        let mut pem = text.trim().to_owned();
        pem.push('\n');
        let key = PrivateKey::from_openssh(pem.as_bytes())
            .map_err(|e| format!("is not an OpenSSH private key (ssh-keygen -t ed25519 makes one): {e}"))?;
        if key.is_encrypted() {
            return Err("is encrypted with a passphrase; give the worker a key without one".into());
        }
        Ok(Self(key))
    }

    /// `SHA256:…`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.0.public_key().fingerprint(HashAlg::Sha256).to_string()
    }

    /// The public half, as an OpenSSH line.
    pub fn public_openssh(&self) -> String {
        self.0.public_key().to_openssh().unwrap_or_default()
    }

    /// The armoured signature (`-----BEGIN SSH SIGNATURE-----`) over `msg`.
    ///
    /// # Errors
    /// A message naming the key type when it cannot sign.
    pub fn sign(&self, msg: &[u8]) -> Result<String, String> {
        let sig = self
            .0
            .sign(NAMESPACE, HashAlg::Sha512, msg)
            .map_err(|e| format!("cannot sign with this {} key: {e}", self.0.algorithm()))?;
        sig.to_pem(LineEnding::LF).map_err(|e| e.to_string())
    }
}

/// Who may have signed: one public key, or an `allowed_signers` file.
#[derive(Debug, Clone)]
pub enum Trusted {
    Key(PublicKey),
    Signers(Vec<AllowedSigner>),
}

/// One line of an `allowed_signers` file.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    pub principals: Vec<String>,
    /// `namespaces="…"`; `None` when the line does not limit them.
    pub namespaces: Option<Vec<String>>,
    pub key: PublicKey,
    /// Where it was read: `FILE:LINE`.
    pub at: String,
}

/// Parses one public key line (`ssh-ed25519 AAAA… comment`).
///
/// # Errors
/// A message.
pub fn public_key(text: &str) -> Result<PublicKey, String> {
    PublicKey::from_openssh(text.trim()).map_err(|e| format!("is not an OpenSSH public key: {e}"))
}

/// Splits `s` at its first run of blanks outside double quotes.
fn token(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => return (&s[..i], s[i..].trim_start()),
            _ => {}
        }
    }
    (s, "")
}

/// Parses an `allowed_signers` file's text; `file` names it in errors.
///
/// # Errors
/// A message naming `FILE:LINE`.
pub fn allowed_signers(text: &str, file: &str) -> Result<Vec<AllowedSigner>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{file}:{}", i + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (principals, rest) = token(line);
        let principals: Vec<String> = principals
            .trim_matches('"')
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
        let (next, after) = token(rest);
        let is_key_type = |t: &str| t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-");
        let (options, key_text) = if is_key_type(next) { ("", rest) } else { (next, after) };
        let mut namespaces = None;
        for opt in split_options(options) {
            let (name, value) = opt.split_once('=').unwrap_or((opt, ""));
            match name.to_ascii_lowercase().as_str() {
                "namespaces" => {
                    namespaces = Some(value.trim_matches('"').split(',').map(|n| n.trim().to_owned()).collect())
                }
                "cert-authority" => {
                    return Err(format!("{at}: cert-authority lines are not supported (certificates are not)"));
                }
                "valid-after" | "valid-before" => {}
                other => return Err(format!("{at}: unknown option {other:?}")),
            }
        }
        let key = public_key(key_text).map_err(|m| format!("{at}: the key {m}"))?;
        if principals.is_empty() {
            return Err(format!("{at}: no principal"));
        }
        out.push(AllowedSigner { principals, namespaces, key, at });
    }
    if out.is_empty() {
        return Err(format!("{file}: lists no signer"));
    }
    Ok(out)
}

/// `a,b="x,y",c` split at the commas outside quotes.
fn split_options(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut start) = (false, 0);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

/// Checks the armoured signature `sig` over `msg` against `trusted`; returns who
/// signed: the principal (allowed signers) or the key's fingerprint.
///
/// # Errors
/// A message that names the key that signed when it is not trusted.
pub fn verify(trusted: &Trusted, msg: &[u8], sig: &str) -> Result<String, String> {
    let sig = SshSig::from_pem(sig.trim().as_bytes()).map_err(|e| format!("is not an SSH signature: {e}"))?;
    if sig.namespace() != NAMESPACE {
        return Err(format!("was made for namespace {:?}, not {NAMESPACE:?}", sig.namespace()));
    }
    let signer = PublicKey::from(sig.public_key().clone());
    let fingerprint = signer.fingerprint(HashAlg::Sha256).to_string();
    let who = match trusted {
        Trusted::Key(k) if k.key_data() == signer.key_data() => fingerprint.clone(),
        Trusted::Key(k) => {
            return Err(format!(
                "was made by key {fingerprint}, not by the key given ({})",
                k.fingerprint(HashAlg::Sha256)
            ));
        }
        Trusted::Signers(list) => {
            let listed = list.iter().find(|s| {
                s.key.key_data() == signer.key_data()
                    && s.namespaces.as_ref().is_none_or(|n| n.iter().any(|n| n == NAMESPACE))
            });
            match listed {
                Some(s) => s.principals.join(","),
                None => {
                    return Err(format!(
                        "was made by key {fingerprint}, which the allowed signers do not list for namespace {NAMESPACE:?}"
                    ));
                }
            }
        }
    };
    signer.verify(NAMESPACE, msg, &sig).map_err(|e| format!("does not verify with key {fingerprint}: {e}"))?;
    Ok(who)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_signers_lines_parse_with_and_without_options() {
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMufATwpEWm5MOHs0dPM7/io/IghGw8XxmykgzIMwCaS";
        let text = format!(
            "# auditors\nalice@example.com {k} alice\n\"bob,carol\" namespaces=\"git,reverify\" {k}\ndan namespaces=\"git\" {k}\n"
        );
        let list = allowed_signers(&text, "signers").unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].principals, ["alice@example.com"]);
        assert_eq!(list[1].principals, ["bob", "carol"]);
        assert_eq!(list[1].namespaces.as_deref(), Some(&["git".to_owned(), "reverify".to_owned()][..]));
        assert_eq!(list[2].at, "signers:4");
        let e = allowed_signers(&format!("x cert-authority {k}\n"), "f").unwrap_err();
        assert!(e.starts_with("f:1: cert-authority"), "{e}");
        let e = allowed_signers("x ssh-ed25519 notbase64\n", "f").unwrap_err();
        assert!(e.starts_with("f:1: the key"), "{e}");
    }
}

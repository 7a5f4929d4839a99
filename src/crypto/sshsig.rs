//! SSH signatures (SSHSIG, as `ssh-keygen -Y sign` makes them and git uses for
//! signed commits): who proved they hold a key, over which message.
//!
//! Two functions and one file format:
//! - [`sign`]: a private key file (Ed25519 or ECDSA P-256/P-384, unencrypted) signs
//!   a message in a namespace; a *public* key file asks `ssh-agent` for the private
//!   half, through `ssh-keygen -Y sign` (the agent protocol is OpenSSH's, so the
//!   tool that speaks it is used rather than a second implementation).
//! - [`verify`]: an armored signature over a message in a namespace, checked
//!   against an [`AllowedSigners`] file (OpenSSH's `allowed_signers` format) or one
//!   public key; the answer is the principal the key proves.
//!
//! The signature is made with the RustCrypto `ssh-key` crate (SHA-512, as
//! `ssh-keygen` does), so `ssh-keygen -Y verify` accepts ours and we accept its.
//!
//! What a signature proves: that whoever signed held the private key of a key the
//! allowed-signers file lists, and meant this namespace and these exact bytes. It
//! does not prove the key is still in the right hands, nor that the file listing
//! the keys is the one the organisation meant: both are the operator's to guard.

use std::path::{Path, PathBuf};

use ssh_key::{HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};

/// The namespace reverify signs and verifies in (`ssh-keygen -Y sign -n reverify`).
pub const NAMESPACE: &str = "reverify";

/// Why a signature could not be made or was not accepted. Each names the file
/// (and line) or says what was wrong with the signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshSigError {
    #[error("{path}: {message}")]
    Key { path: String, message: String },
    #[error("{path}:{line}: {message}")]
    AllowedSigners { path: String, line: usize, message: String },
    #[error("the signature is not an SSH signature (-----BEGIN SSH SIGNATURE-----): {0}")]
    Armor(String),
    #[error(
        "the signature is for namespace {found:?}, not {expected:?} (sign with `ssh-keygen -Y sign -n {expected}`)"
    )]
    Namespace { found: String, expected: String },
    #[error("the signature does not match the message: it was made over other bytes, or altered")]
    Mismatch,
    #[error("the signing key {fingerprint} is not listed for namespace {namespace:?} in {signers}")]
    UnknownSigner { fingerprint: String, namespace: String, signers: String },
    #[error("the signing key {fingerprint} is listed for more than one principal in {signers} ({principals})")]
    Ambiguous { fingerprint: String, signers: String, principals: String },
    #[error("ssh-keygen (for ssh-agent): {0}")]
    Agent(String),
}

/// Signs `msg` in `namespace` with the key in `key_file`; returns the armored
/// signature (`-----BEGIN SSH SIGNATURE-----`), the text `ssh-keygen -Y sign` writes.
///
/// `key_file` is an OpenSSH private key (Ed25519, ECDSA), or the public half of a
/// key held by `ssh-agent` (`SSH_AUTH_SOCK`), which then signs.
///
/// # Errors
/// [`SshSigError::Key`] naming the file (unreadable, not a key, passphrase
/// protected, an algorithm this build cannot sign with); [`SshSigError::Agent`].
pub fn sign(key_file: &Path, namespace: &str, msg: &[u8]) -> Result<String, SshSigError> {
    let shown = key_file.display().to_string();
    let key_err = |message: String| SshSigError::Key { path: shown.clone(), message };
    let text = std::fs::read_to_string(key_file).map_err(|e| key_err(format!("cannot read the key: {e}")))?;
    if !text.trim_start().starts_with("-----BEGIN") {
        // a public key: its private half is in the agent
        PublicKey::from_openssh(text.trim())
            .map_err(|e| key_err(format!("neither an OpenSSH private key nor a public key: {e}")))?;
        return sign_with_agent(key_file, namespace, msg, None);
    }
    let key = PrivateKey::from_openssh(text.as_bytes())
        .map_err(|e| key_err(format!("not an OpenSSH private key (ssh-keygen -t ed25519 makes one): {e}")))?;
    if key.is_encrypted() {
        return Err(key_err(
            "the key is passphrase-protected: add it to ssh-agent and pass its public half (KEY.pub), \
             or sign elsewhere with `ssh-keygen -Y sign -n reverify` and pass the signature file"
                .into(),
        ));
    }
    let sig = key.sign(namespace, HashAlg::Sha512, msg).map_err(|e| key_err(format!("cannot sign: {e}")))?;
    sig.to_pem(LineEnding::LF).map_err(|e| key_err(format!("cannot armor the signature: {e}")))
}

/// `ssh-keygen -Y sign -n NAMESPACE -f KEY.pub`, the message on its standard input:
/// the agent holding the key (at `sock`, else `SSH_AUTH_SOCK`) signs.
fn sign_with_agent(public: &Path, namespace: &str, msg: &[u8], sock: Option<&Path>) -> Result<String, SshSigError> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new("ssh-keygen");
    if let Some(sock) = sock {
        cmd.env("SSH_AUTH_SOCK", sock);
    }
    let mut child = cmd
        .args(["-q", "-Y", "sign", "-n", namespace, "-f"])
        .arg(public)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SshSigError::Agent(format!("cannot start ssh-keygen: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(msg).map_err(|e| SshSigError::Agent(format!("cannot write the message: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| SshSigError::Agent(e.to_string()))?;
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(SshSigError::Agent(format!(
            "signing with the agent's key for {} failed (is it loaded? ssh-add -l): {why}",
            public.display()
        )));
    }
    String::from_utf8(out.stdout).map_err(|_| SshSigError::Agent("the signature is not text".into()))
}

/// Who may sign: an `allowed_signers` file, or one public key.
#[derive(Debug, Clone)]
pub enum Signers {
    AllowedSigners(AllowedSigners),
    /// One key; the principal it proves is its SHA-256 fingerprint.
    PublicKey(PublicKey),
}

impl Signers {
    /// Reads `path`: an `allowed_signers` file, or a single OpenSSH public key.
    ///
    /// # Errors
    /// [`SshSigError::Key`] (unreadable) or [`SshSigError::AllowedSigners`] naming
    /// the line.
    pub fn load(path: &Path) -> Result<Self, SshSigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SshSigError::Key { path: path.display().to_string(), message: format!("cannot read: {e}") })?;
        if let Ok(key) = PublicKey::from_openssh(text.trim()) {
            return Ok(Self::PublicKey(key));
        }
        AllowedSigners::parse(&text, path).map(Self::AllowedSigners)
    }
}

/// One line of an `allowed_signers` file.
#[derive(Debug, Clone)]
struct Allowed {
    principals: Vec<String>,
    /// `namespaces="a,b"`; `None`: every namespace.
    namespaces: Option<Vec<String>>,
    key: PublicKey,
    line: usize,
}

/// OpenSSH's `allowed_signers` (ssh-keygen(1), "ALLOWED SIGNERS"): per line,
/// principals (comma-separated), optional options, a public key. Of the options,
/// `namespaces="…"` is honoured; `cert-authority`, `valid-after` and `valid-before`
/// are refused rather than ignored (certificates are not supported).
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    path: PathBuf,
    entries: Vec<Allowed>,
}

impl AllowedSigners {
    /// Parses the text of `path`.
    ///
    /// # Errors
    /// [`SshSigError::AllowedSigners`] naming the line and what is wrong.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SshSigError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| SshSigError::AllowedSigners {
                path: path.display().to_string(),
                line: i + 1,
                message,
            };
            let (principals, rest) = next_field(line);
            let principals: Vec<String> = principals
                .trim_matches('"')
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(Into::into)
                .collect();
            if principals.is_empty() {
                return Err(err("no principal".into()));
            }
            let (second, after) = next_field(rest);
            let (options, key_text) =
                if PublicKey::from_openssh(rest.trim()).is_ok() { ("", rest.trim()) } else { (second, after.trim()) };
            let mut namespaces = None;
            for opt in split_options(options) {
                let (name, value) = opt.split_once('=').map_or((opt, None), |(n, v)| (n, Some(v.trim_matches('"'))));
                match (name.to_ascii_lowercase().as_str(), value) {
                    ("namespaces", Some(v)) => {
                        namespaces = Some(v.split(',').map(|s| s.trim().to_owned()).collect());
                    }
                    (other, _) => {
                        return Err(err(format!(
                            "option {other:?} is not supported (only namespaces=\"…\"; certificates are not)"
                        )));
                    }
                }
            }
            let key = PublicKey::from_openssh(key_text)
                .map_err(|e| err(format!("not a public key (\"ssh-ed25519 AAAA…\"): {e}")))?;
            entries.push(Allowed { principals, namespaces, key, line: i + 1 });
        }
        Ok(Self { path: path.to_path_buf(), entries })
    }

    /// The principals that may sign with `key` in `namespace`.
    fn principals_for(&self, key: &ssh_key::public::KeyData, namespace: &str) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in &self.entries {
            let ns_ok = e.namespaces.as_ref().is_none_or(|ns| ns.iter().any(|n| pattern_match(n, namespace)));
            if e.key.key_data() == key && ns_ok {
                out.extend(e.principals.iter().map(String::as_str));
            }
        }
        out.dedup();
        out
    }

    /// How many keys the file lists.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file lists no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The line a principal is first listed on, for messages.
    pub fn line_of(&self, principal: &str) -> Option<usize> {
        self.entries.iter().find(|e| e.principals.iter().any(|p| p == principal)).map(|e| e.line)
    }
}

/// The first white-space separated field of `s` (a double-quoted one may hold
/// spaces) and the rest.
fn next_field(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&s[..i], &s[i..]),
            _ => {}
        }
    }
    (s, "")
}

/// `a,b="x,y",c` -> `a`, `b="x,y"`, `c`.
fn split_options(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
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
    out.into_iter().map(str::trim).filter(|o| !o.is_empty()).collect()
}

/// OpenSSH's pattern: `*` any run, `?` one character.
fn pattern_match(pattern: &str, s: &str) -> bool {
    fn go(p: &[char], s: &[char]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    go(&p, &s)
}

/// Checks the armored `signature` over `msg` in `namespace`; returns the principal
/// the signing key proves (for a single public key: its `SHA256:` fingerprint).
///
/// # Errors
/// [`SshSigError::Armor`], [`SshSigError::Namespace`], [`SshSigError::Mismatch`],
/// [`SshSigError::UnknownSigner`], [`SshSigError::Ambiguous`].
pub fn verify(signers: &Signers, namespace: &str, msg: &[u8], signature: &str) -> Result<String, SshSigError> {
    let sig = SshSig::from_pem(signature.trim().as_bytes()).map_err(|e| SshSigError::Armor(e.to_string()))?;
    if sig.namespace() != namespace {
        return Err(SshSigError::Namespace { found: sig.namespace().to_owned(), expected: namespace.to_owned() });
    }
    let signer = PublicKey::from(sig.public_key().clone());
    let fingerprint = signer.fingerprint(HashAlg::Sha256).to_string();
    let principal = match signers {
        Signers::PublicKey(key) => {
            if key.key_data() != sig.public_key() {
                return Err(SshSigError::UnknownSigner {
                    fingerprint,
                    namespace: namespace.to_owned(),
                    signers: format!("the public key {}", key.fingerprint(HashAlg::Sha256)),
                });
            }
            fingerprint.clone()
        }
        Signers::AllowedSigners(allowed) => {
            let shown = allowed.path.display().to_string();
            match allowed.principals_for(sig.public_key(), namespace).as_slice() {
                [] => {
                    return Err(SshSigError::UnknownSigner {
                        fingerprint,
                        namespace: namespace.to_owned(),
                        signers: shown,
                    });
                }
                [one] => (*one).to_owned(),
                many => {
                    return Err(SshSigError::Ambiguous { fingerprint, signers: shown, principals: many.join(", ") });
                }
            }
        }
    };
    signer.verify(namespace, msg, &sig).map_err(|_| SshSigError::Mismatch)?;
    Ok(principal)
}

#[cfg(test)]
mod tests;

//! Refresh tokens at rest: ChaCha20-Poly1305 with the user id as associated data, so
//! a ciphertext copied onto another user's row does not decrypt.
//!
//! A key's id is the first 8 hex digits of its SHA-256, stored beside each
//! ciphertext. Rotation: set the new key as `token_key`, the old one in
//! `token_keys_previous`, and run `reverify users rekey`.
//!
//! [`sshsig`]: SSH signatures, which prove who approved a campaign version.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::Secret;

pub mod sshsig;

const NONCE_LEN: usize = 12;

/// Why a token could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("token_key is not set: set REVERIFY_TOKEN_KEY or REVERIFY_TOKEN_KEY_FILE (32 bytes, base64)")]
    NoKey,
    #[error("{key}: not 32 bytes of base64 (generate one with `reverify keygen`)")]
    BadKey { key: &'static str },
    #[error(
        "refresh token of user {user_id} was encrypted with key {key_id}, which is neither token_key nor in token_keys_previous"
    )]
    UnknownKey { user_id: String, key_id: String },
    #[error(
        "refresh token of user {user_id} does not decrypt with key {key_id}: wrong key, or the row was tampered with"
    )]
    Tampered { user_id: String, key_id: String },
}

struct KeyEntry {
    id: String,
    cipher: ChaCha20Poly1305,
}

/// Seals with the current key; opens with the current or any previous key.
pub struct TokenCipher {
    current: KeyEntry,
    previous: Vec<KeyEntry>,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCipher").field("key_id", &self.current.id).finish_non_exhaustive()
    }
}

fn decode_key(b64: &str, key: &'static str) -> Result<KeyEntry, CryptoError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(|_| CryptoError::BadKey { key })?,
    );
    if bytes.len() != 32 {
        return Err(CryptoError::BadKey { key });
    }
    let id = hex::encode(&Sha256::digest(&bytes[..])[..4]);
    Ok(KeyEntry { id, cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)) })
}

impl TokenCipher {
    /// Builds the cipher from the settings' `token_key` and `token_keys_previous`.
    ///
    /// # Errors
    /// [`CryptoError::NoKey`] or [`CryptoError::BadKey`].
    pub fn from_secrets(current: Option<&Secret>, previous: Option<&Secret>) -> Result<Self, CryptoError> {
        let current = decode_key(current.ok_or(CryptoError::NoKey)?.expose(), "token_key")?;
        let previous = match previous {
            None => vec![],
            Some(p) => p
                .expose()
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|k| decode_key(k, "token_keys_previous"))
                .collect::<Result<_, _>>()?,
        };
        Ok(Self { current, previous })
    }

    /// A fresh random key, base64, for `reverify keygen`.
    pub fn generate_key() -> String {
        base64::engine::general_purpose::STANDARD.encode(ChaCha20Poly1305::generate_key(&mut OsRng))
    }

    /// The id of the key new ciphertexts are sealed with.
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `token` for `user_id`; returns nonce || ciphertext.
    pub fn seal(&self, user_id: &str, token: &str) -> Vec<u8> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .current
            .cipher
            .encrypt(&nonce, Payload { msg: token.as_bytes(), aad: user_id.as_bytes() })
            .expect("ChaCha20-Poly1305 encryption cannot fail for in-memory input");
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a ciphertext sealed for `user_id` with the key `key_id`.
    ///
    /// # Errors
    /// [`CryptoError::UnknownKey`] or [`CryptoError::Tampered`]; never garbage.
    pub fn open(&self, user_id: &str, key_id: &str, sealed: &[u8]) -> Result<Zeroizing<String>, CryptoError> {
        let entry = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == key_id)
            .ok_or_else(|| CryptoError::UnknownKey { user_id: user_id.to_owned(), key_id: key_id.to_owned() })?;
        let tampered = || CryptoError::Tampered { user_id: user_id.to_owned(), key_id: key_id.to_owned() };
        if sealed.len() < NONCE_LEN {
            return Err(tampered());
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let plain = entry
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: user_id.as_bytes() })
            .map_err(|_| tampered())?;
        String::from_utf8(plain).map(Zeroizing::new).map_err(|_| tampered())
    }

    /// True when a ciphertext under `key_id` should be re-sealed with the current key.
    pub fn needs_rekey(&self, key_id: &str) -> bool {
        key_id != self.current.id
    }
}

/// The associated data an access token is sealed with: not the refresh token's
/// (the user id), so that one cannot stand in for the other.
pub fn access_token_ad(user_id: &str) -> String {
    format!("{user_id}:access")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(key: &str, prev: Option<&str>) -> TokenCipher {
        TokenCipher::from_secrets(Some(&Secret::new(key)), prev.map(Secret::new).as_ref()).unwrap()
    }

    #[test]
    fn round_trip_and_binding_to_the_user() {
        let k = TokenCipher::generate_key();
        let c = cipher(&k, None);
        let sealed = c.seal("user-a", "rt_secret");
        assert!(!sealed.windows(9).any(|w| w == b"rt_secret"));
        assert_eq!(c.open("user-a", c.key_id(), &sealed).unwrap().as_str(), "rt_secret");
        assert!(matches!(c.open("user-b", c.key_id(), &sealed), Err(CryptoError::Tampered { .. })));
        let mut flipped = sealed.clone();
        flipped[20] ^= 1;
        assert!(matches!(c.open("user-a", c.key_id(), &flipped), Err(CryptoError::Tampered { .. })));
    }

    #[test]
    fn wrong_key_is_a_clear_error() {
        let a = cipher(&TokenCipher::generate_key(), None);
        let b = cipher(&TokenCipher::generate_key(), None);
        let sealed = a.seal("u", "t");
        assert!(matches!(b.open("u", a.key_id(), &sealed), Err(CryptoError::UnknownKey { .. })));
        // same id claimed, different key: still no garbage
        assert!(matches!(b.open("u", b.key_id(), &sealed), Err(CryptoError::Tampered { .. })));
    }

    #[test]
    fn previous_keys_open_and_ask_for_rekey() {
        let old = TokenCipher::generate_key();
        let new = TokenCipher::generate_key();
        let sealed = cipher(&old, None).seal("u", "t");
        let old_id = cipher(&old, None).key_id().to_owned();
        let rotated = cipher(&new, Some(&old));
        assert_eq!(rotated.open("u", &old_id, &sealed).unwrap().as_str(), "t");
        assert!(rotated.needs_rekey(&old_id));
        assert!(!rotated.needs_rekey(rotated.key_id()));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(
            TokenCipher::from_secrets(Some(&Secret::new("short")), None),
            Err(CryptoError::BadKey { key: "token_key" })
        ));
        assert!(matches!(TokenCipher::from_secrets(None, None), Err(CryptoError::NoKey)));
    }
}

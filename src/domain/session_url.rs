//! The session URL: a bearer credential for a user's identity check.
//!
//! It exists only in memory, between the API's answer and the message that carries
//! it (design.md, invariant 2). This type has no `Serialize`, and its `Debug` and
//! `Display` print nothing of it; the notifier calls [`SessionUrl::expose`] to put it
//! in the message, and nothing else should.

use std::fmt;

use zeroize::Zeroizing;

/// A verification session URL that redacts itself.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionUrl(Zeroizing<String>);

impl SessionUrl {
    /// Wraps a URL received from the API.
    pub fn new(url: String) -> Self {
        Self(Zeroizing::new(url))
    }

    /// The URL itself. Call it only to render the message that delivers it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SessionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionUrl([REDACTED])")
    }
}

impl fmt::Display for SessionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED session URL]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_itself() {
        let u = SessionUrl::new("https://verify.example/s/abc123secret".into());
        assert!(!format!("{u:?}").contains("abc123secret"));
        assert!(!format!("{u}").contains("abc123secret"));
        assert!(!format!("{:#?}", Some(&u)).contains("abc123secret"));
        assert_eq!(u.expose(), "https://verify.example/s/abc123secret");
    }
}

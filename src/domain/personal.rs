//! Personal data in free text: the error texts other systems send back (an SMTP
//! reply that quotes the recipient, a webhook's or the API's body) are scrubbed
//! of addresses and names before they are logged or stored, and a dashboard
//! viewer sees every address in such a text masked.
//!
//! Decisions:
//! - An address is found by its shape (`local@host.tld`, the characters RFC 5321
//!   allows unquoted), not by a full parser: it must catch what a server echoes,
//!   `<jane.doe@example.com>:` included, and a false match only blanks a word.
//! - A person's names are removed only where they stand as whole words, compared
//!   without case, and only names of two characters or more (a single letter would
//!   blank half of every text).

/// What an address becomes in a scrubbed text.
pub const ADDRESS: &str = "[address]";
/// What a name becomes in a scrubbed text.
pub const NAME: &str = "[name]";

fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c)
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

/// `text` with every address-shaped run replaced by `f(address)`.
pub fn map_addresses(text: &str, mut f: impl FnMut(&str) -> String) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let before = &rest[..at];
        let start = before.char_indices().rev().take_while(|(_, c)| is_local_char(*c)).last().map_or(at, |(i, _)| i);
        let after = &rest[at + 1..];
        let host_len =
            after.char_indices().take_while(|(_, c)| is_host_char(*c)).last().map_or(0, |(i, c)| i + c.len_utf8());
        let host = after[..host_len].trim_end_matches(['.', '-']);
        let local = before[start..].trim_start_matches('.');
        let start = at - local.len();
        if !local.is_empty() && host.contains('.') && !host.starts_with('.') {
            out.push_str(&rest[..start]);
            out.push_str(&f(&rest[start..at + 1 + host.len()]));
            rest = &rest[at + 1 + host.len()..];
        } else {
            out.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

/// `text` with every address replaced by [`ADDRESS`].
pub fn redact_addresses(text: &str) -> String {
    map_addresses(text, |_| ADDRESS.to_owned())
}

/// `text` without `email` (in any case) or any other address, nor any of `names`
/// as a whole word (in any case).
pub fn scrub_person(text: &str, email: &str, names: &[&str]) -> String {
    let mut out = replace_caseless(text, email, ADDRESS, false);
    out = redact_addresses(&out);
    for name in names.iter().map(|n| n.trim()).filter(|n| n.chars().count() >= 2) {
        out = replace_caseless(&out, name, NAME, true);
    }
    out
}

/// `text` with each occurrence of `needle` (compared in lower case) replaced; with
/// `words`, only where it is not inside a word.
fn replace_caseless(text: &str, needle: &str, with: &str, words: bool) -> String {
    if needle.is_empty() {
        return text.to_owned();
    }
    let (hay, pat) = (text.to_lowercase(), needle.to_lowercase());
    // lower-casing may change lengths: fall back to exact matching then
    if hay.len() != text.len() || pat.len() != needle.len() {
        return if words { text.to_owned() } else { text.replace(needle, with) };
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut from = 0;
    while let Some(i) = hay[from..].find(&pat).map(|i| i + from) {
        let end = i + pat.len();
        let inside = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
        if words && (inside(text[..i].chars().next_back()) || inside(text[end..].chars().next())) {
            from = i + pat.chars().next().map_or(1, char::len_utf8);
            continue;
        }
        out.push_str(&text[last..i]);
        out.push_str(with);
        last = end;
        from = end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_found_where_servers_put_them() {
        let t = "450 4.2.1 <Jane.Doe+kyc@Example.COM>: Mailbox busy; also bob@x.io. and a@b";
        assert_eq!(redact_addresses(t), "450 4.2.1 <[address]>: Mailbox busy; also [address]. and a@b");
        assert_eq!(redact_addresses("no at sign"), "no at sign");
        assert_eq!(redact_addresses("@@x.y"), "@@x.y");
        assert_eq!(map_addresses("to j@e.com", |a| a.to_uppercase()), "to J@E.COM");
    }

    #[test]
    fn a_person_is_scrubbed_in_any_case_and_as_whole_words() {
        let t = "550 5.1.1 JANE.DOE@EXAMPLE.COM (Jane Doe) unknown; Janet stays; doe";
        assert_eq!(
            scrub_person(t, "jane.doe@example.com", &["Jane", "Doe", "J"]),
            "550 5.1.1 [address] ([name] [name]) unknown; Janet stays; [name]"
        );
    }
}

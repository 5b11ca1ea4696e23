//! Redaction: [`redact`], which hides the secrets a store URL may hold
//! wherever anykv shows one.

use percent_encoding::percent_decode_str;

use super::valid_scheme;

/// Words that make a query option a secret, its value shown as `***`
/// (see [`redact`]).
const SECRET_OPTION_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "token",
    "secret",
    "auth",
    "credential",
    "key",
];

/// True for an option name that may hold a secret (`password`, `token`,
/// and anything that looks like one, in any case): its value is shown as
/// `***`.
fn is_secret_option(name: &str) -> bool {
    let name = percent_decode_str(&name.replace('+', " "))
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    SECRET_OPTION_WORDS.iter().any(|word| name.contains(word))
}

/// The URL with every secret it may hold replaced by `***`: what every
/// error, `Debug` and `Display` of anykv shows of a store URL, and what
/// programs should print instead of a URL they were given.
///
/// It works on any text, parsable or not, and errs on the side of hiding:
///
/// * the userinfo: everything between `://` (or the start, if there is no
///   valid scheme) and the **last** `@`. Only when the URL has a valid
///   scheme, that part lies wholly in the authority (no `/`, `?` or `#` in
///   it) and has a `:` is the user name before the `:` kept;
/// * the value of every `token=`, `password=` or similar query option
///   (any case, percent-encoded or not), up to the next `&`.
///
/// ```
/// use anykv::url::redact;
/// assert_eq!(redact("redis://bob:s3cret@h/x?db=1"), "redis://bob:***@h/x?db=1");
/// assert_eq!(redact("consul://h/app?token=abc"), "consul://h/app?token=***");
/// // A password with an unencoded `/`: hidden up to the last `@`.
/// assert_eq!(redact("redis://:pa/ss@h/x"), "redis://***@h/x");
/// ```
pub fn redact(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut shown_to = 0;
    for (from, to) in hidden_spans(url) {
        out.push_str(&url[shown_to..from]);
        out.push_str("***");
        shown_to = to;
    }
    out.push_str(&url[shown_to..]);
    out
}

/// `text` with every secret of `url` — what [`redact`] hides, as written
/// and percent-decoded — replaced by `***`. For programs that print text
/// from elsewhere (a client library's error, a server's answer) that may
/// quote a secret of the URL they were given; anykv's own errors are
/// redacted already. Secrets shorter than three characters are left alone:
/// replacing them would garble the text and hide next to nothing.
///
/// ```
/// let url = "redis://bob:s3cr3t@h:6379/app?token=t%40ken";
/// let text = anykv::url::scrub(url, "AUTH s3cr3t refused; token t@ken");
/// assert_eq!(text, "AUTH *** refused; token ***");
/// ```
pub fn scrub(url: &str, text: &str) -> String {
    let mut secrets: Vec<String> = Vec::new();
    for (from, to) in hidden_spans(url) {
        let raw = &url[from..to];
        secrets.push(raw.to_owned());
        secrets.push(
            percent_decode_str(&raw.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned(),
        );
    }
    secrets.retain(|s| s.len() >= 3);
    // Longest first, so a secret that contains another is hidden whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    let mut text = text.to_owned();
    for secret in &secrets {
        text = text.replace(secret.as_str(), "***");
    }
    text
}

/// The byte ranges of `url` that [`redact`] hides, sorted and merged.
fn hidden_spans(url: &str) -> Vec<(usize, usize)> {
    let mut hidden: Vec<(usize, usize)> = Vec::new();
    let start = match url.find("://") {
        Some(i) if valid_scheme(&url[..i]) => i + 3,
        _ => 0,
    };
    if let Some(at) = url.rfind('@').filter(|&at| at >= start) {
        let userinfo = &url[start..at];
        match userinfo.find(':') {
            Some(colon) if start > 0 && !userinfo.contains(['/', '?', '#']) => {
                hidden.push((start + colon + 1, at));
            }
            _ => hidden.push((start, at)),
        }
    }
    for (i, _) in url.match_indices(['?', '&']) {
        let piece_end = url[i + 1..].find('&').map_or(url.len(), |j| i + 1 + j);
        if let Some(eq) = url[i + 1..piece_end].find('=') {
            if is_secret_option(&url[i + 1..i + 1 + eq]) {
                hidden.push((i + 2 + eq, piece_end));
            }
        }
    }
    hidden.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::new();
    for (from, to) in hidden {
        match merged.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => merged.push((from, to)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::StoreUrl;

    #[test]
    fn redacts_password_and_token() {
        let u = StoreUrl::parse("redis://bob:s3cret@h:6379/x?token=t0k&db=1").unwrap();
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        let shown = format!("{u} {u:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0k"),
            "{shown}"
        );
        assert!(shown.contains("bob:***@h:6379/x"));
        let err = StoreUrl::parse("redis://bob:s3cret@h:notaport/").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    /// Every text a parse of `url` can show: the error's `Display` and
    /// `Debug`, or the parsed URL's.
    fn shown(url: &str) -> String {
        match StoreUrl::parse(url) {
            Ok(u) => format!("{u} {u:?} {}", u.redacted),
            Err(e) => format!("{e} {e:?}"),
        }
    }

    #[test]
    fn passwords_with_delimiters_never_show() {
        for (url, secrets) in [
            ("redis://:pa/ss@h/x", &["pa/ss", ":pa", "pa%2F"][..]),
            ("rediss://user:1234/abcd@host", &["1234", "abcd@"]),
            ("redis://u:12?a=b@h/x", &["12?a", "a=b"]),
            ("redis://u:pa?ss@h/x", &["pa?ss", ":pa", "ss@"]),
            ("redis://u:p#ss@h/", &["p#ss", ":p#"]),
            ("redis://u:p@ss/x@h/", &["p@ss", "ss/x"]),
            ("etcd://user:p%40ss@h/ns", &["p%40ss", "p@ss"]),
            ("etcd://user:p%2Fss@h:99999/ns", &["p%2Fss", "p/ss"]),
            ("redis:u:s3cr@h://x", &["s3cr"]),
            ("consul://h/ns?Token=t0k3n&x=1", &["t0k3n"]),
            ("consul://h/ns?token=t0k@3n", &["t0k", "3n"]),
            ("consul://h/ns?token=t0k#3n", &["t0k", "3n"]),
            (
                "etcd://h/?username=u&password=pw%26x%3Dy",
                &["pw%26", "x%3Dy"],
            ),
            ("etcd://h/?%70assword=s3cr3t", &["s3cr3t"]),
        ] {
            let shown = shown(url);
            for secret in secrets {
                assert!(!shown.contains(secret), "{url}: {secret:?} in {shown}");
            }
        }
    }

    #[test]
    fn redact_hides_userinfo_passwords_and_secret_options() {
        for (raw, want) in [
            (
                "redis://bob:s3cret@h:6379/x?token=t0k&db=1",
                "redis://bob:***@h:6379/x?token=***&db=1",
            ),
            ("redis://:pw@h", "redis://:***@h"),
            ("redis://bob@h", "redis://***@h"),
            ("redis://:pa/ss@h/x", "redis://***@h/x"),
            ("redis://u:p#ss@h/", "redis://***@h/"),
            ("consul://h/?token=a@b", "consul://***"),
            (
                "consul://h/?x=1&TOKEN=abc#f&y=2",
                "consul://h/?x=1&TOKEN=***&y=2",
            ),
            ("nothing", "nothing"),
            ("a:b@c://x", "***@c://x"),
            ("memory://", "memory://"),
            ("", ""),
        ] {
            assert_eq!(redact(raw), want, "{raw}");
        }
    }
}

//! The one nickname rule, for the robot's own nickname (configuration and
//! profile) and for the owners' nicknames (pairing on both sides, the owners
//! file); `docs/protocol.md` 6.3 states it.
//!
//! Nicknames end up in terminals (`robotd owners`), logs and phone screens, so
//! they are kept short and printable: after trimming surrounding white space a
//! nickname must be 1 to [`MAX_CHARS`] characters with no control characters
//! (C0, DEL, C1: newlines and ANSI escapes could rewrite what an admin sees).
//! Bidirectional-control characters (which can make one name display as
//! another, e.g. U+202E RIGHT-TO-LEFT OVERRIDE) are accepted but removed.
//!
//! [`check`] applies the rule where a name comes in and can be refused (the
//! configuration, a pairing request, `robotctl pair`). [`sanitize`] applies the
//! same rule where refusing is not an option (a stored owners file): it drops
//! what [`check`] would refuse and truncates instead, so any name [`check`]
//! accepts comes out of [`sanitize`] exactly as [`check`] returned it.

/// Longest nickname, in characters (Unicode scalar values) after trimming.
pub const MAX_CHARS: usize = 64;

/// Why [`check`] refused a nickname. The messages complete "nickname ... is
/// not allowed: ".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NicknameError {
    /// Nothing is left after trimming.
    #[error("it is empty")]
    Empty,
    /// More than [`MAX_CHARS`] characters are left after trimming.
    #[error("it is longer than 64 characters")]
    TooLong,
    /// It contains a control character (newline, escape, DEL, C1 ...).
    #[error("it contains control characters")]
    Control,
}

/// Bidirectional formatting characters: LRM, RLM, ALM, the embeddings and
/// overrides (U+202A..=U+202E) and the isolates (U+2066..=U+2069).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{061c}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn without_bidi(raw: &str) -> String {
    raw.chars().filter(|&c| !is_bidi_control(c)).collect()
}

/// The nickname as it is kept and shown: `raw` trimmed, refused when that is
/// empty, longer than [`MAX_CHARS`] characters or contains a control
/// character, then without its bidi controls (and trimmed again). The result
/// is empty only when the name was nothing but bidi controls.
pub fn check(raw: &str) -> Result<String, NicknameError> {
    let nick = raw.trim();
    let n = nick.chars().count();
    if n == 0 {
        Err(NicknameError::Empty)
    } else if n > MAX_CHARS {
        Err(NicknameError::TooLong)
    } else if nick.chars().any(char::is_control) {
        Err(NicknameError::Control)
    } else {
        Ok(without_bidi(nick).trim().to_owned())
    }
}

/// [`check`] made total, for names already stored: control characters are
/// dropped instead of refused and long names truncated to [`MAX_CHARS`]. May
/// return an empty string.
pub fn sanitize(raw: &str) -> String {
    let cleaned: String = without_bidi(raw).chars().filter(|c| !c.is_control()).collect();
    let truncated: String = cleaned.trim().chars().take(MAX_CHARS).collect();
    truncated.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn check_trims_and_strips_bidi_controls() {
        assert_eq!(check("  Zoë  ").unwrap(), "Zoë");
        assert_eq!(check("\u{202e}Alice\u{2066}").unwrap(), "Alice");
        assert_eq!(check(" \u{200f} Bob").unwrap(), "Bob");
        // Counted before the bidi controls go, as the protocol says.
        assert_eq!(check(&format!("\u{202e}{}", "x".repeat(MAX_CHARS))), Err(NicknameError::TooLong));
        assert_eq!(check("\u{202e}\u{200e}").unwrap(), "");
        assert_eq!(check(&"é".repeat(MAX_CHARS)).unwrap(), "é".repeat(MAX_CHARS));
    }

    #[test]
    fn check_refuses_empty_long_and_control() {
        assert_eq!(check(""), Err(NicknameError::Empty));
        assert_eq!(check("   "), Err(NicknameError::Empty));
        assert_eq!(check(&"x".repeat(MAX_CHARS + 1)), Err(NicknameError::TooLong));
        assert_eq!(check("a\u{1b}[2J"), Err(NicknameError::Control));
        assert_eq!(check("a\nb"), Err(NicknameError::Control));
        assert_eq!(check("a\u{85}b"), Err(NicknameError::Control));
    }

    #[test]
    fn sanitize_drops_controls_and_bidi_and_truncates() {
        assert_eq!(sanitize("  Al\u{1b}[31mice\n\u{202e}\u{7f}\u{85} "), "Al[31mice");
        assert_eq!(sanitize("a\tb"), "ab");
        assert_eq!(sanitize(&format!("{} x", "a".repeat(63))), "a".repeat(63));
        assert_eq!(sanitize(&"ż".repeat(100)), "ż".repeat(MAX_CHARS));
        assert_eq!(sanitize("\n"), "");
    }

    proptest! {
        /// One rule: a name `check` accepts is stored by `sanitize` exactly as
        /// `check` returned it, and `sanitize` only ever yields names `check`
        /// accepts (or nothing).
        #[test]
        fn sanitize_agrees_with_check(raw in "[ a-zé\\t\\n\\x1b\\u{85}\\u{202e}\\u{2066}\\u{200f}]{0,80}") {
            if let Ok(nick) = check(&raw) {
                prop_assert_eq!(sanitize(&raw), nick);
            }
            let stored = sanitize(&raw);
            prop_assert!(stored.is_empty() || check(&stored) == Ok(stored.clone()));
        }
    }
}

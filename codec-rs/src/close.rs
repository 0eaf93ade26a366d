//! What both protocols' decoders close a connection with: the close codes they share and the
//! `Violation` (the close frame the server sends back). The frame layer and both envelope
//! layers import it from here, so neither protocol's module is the other's dependency.

pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_NOT_ALLOWED: u16 = 4403;

/// Longest close reason that fits a control frame (125 - 2 bytes of code).
pub const MAX_CLOSE_REASON: usize = 123;

/// Longest prefix of `s` that is at most `max` bytes and ends on a character boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A violation: the close frame the server sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: String,
}

impl Violation {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        let mut reason: String = reason.into();
        let keep = truncate_utf8(&reason, MAX_CLOSE_REASON).len();
        reason.truncate(keep);
        Violation { code, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation() {
        assert_eq!(truncate_utf8("abc", 2), "ab");
        assert_eq!(truncate_utf8("aé", 2), "a");
        assert_eq!(truncate_utf8("aé", 3), "aé");
    }
}

//! Identifiers, parsed once at the edge. Each is a fixed prefix plus random
//! lowercase hex from the FIPS DRBG; none is ever reused.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::crypto::{self, CryptoError};

macro_rules! hex_id {
    ($name:ident, $prefix:literal, $bytes:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;
            /// Length of the hex part.
            pub const HEX_LEN: usize = $bytes * 2;

            pub fn generate() -> Result<Self, CryptoError> {
                let b: [u8; $bytes] = crypto::random_array()?;
                Ok(Self(format!("{}{}", $prefix, crypto::hex(&b))))
            }

            /// Parses `<prefix><hex>`; anything else is `None`.
            pub fn parse(s: &str) -> Option<Self> {
                let hex = s.strip_prefix($prefix)?;
                Self::from_hex(hex)
            }

            /// Builds the id from its bare hex part.
            pub fn from_hex(hex: &str) -> Option<Self> {
                let ok = hex.len() == Self::HEX_LEN
                    && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
                ok.then(|| Self(format!("{}{}", $prefix, hex)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The hex part, without the prefix.
            pub fn hex(&self) -> &str {
                &self.0[$prefix.len()..]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

hex_id!(FirmId, "frm_", 12, "A firm (tenant): `frm_` + 24 hex.");
hex_id!(ApiKeyId, "key_", 8, "An API key: `key_` + 16 hex.");
hex_id!(RecordId, "rec_", 12, "A record: `rec_` + 24 hex.");
hex_id!(UserId, "usr_", 8, "A person of a firm: `usr_` + 16 hex.");
hex_id!(
    SessionId,
    "ses_",
    8,
    "A user's signed-in session: `ses_` + 16 hex."
);

impl RecordId {
    /// A time-ordered id: 48-bit Unix milliseconds, then 48 random bits.
    /// New records land at the right edge of the table's B-tree, so a group
    /// commit of many creates dirties a few pages instead of one per record
    /// (each dirty page costs an encryption and a MAC), and lists come in
    /// creation order.
    /// `unix_ms` comes from the injected clock.
    pub fn generate_ordered(unix_ms: u64) -> Result<Self, CryptoError> {
        let mut b: [u8; 12] = crypto::random_array()?;
        b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        Ok(Self(format!("{}{}", Self::PREFIX, crypto::hex(&b))))
    }
}

/// Control characters and [`is_invisible_format`]'s, as the body of a
/// regular-expression class (for the API document's patterns).
pub const NOT_SHOWN_CLASS: &str =
    "\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200b-\\u200f\\u202a-\\u202e\\u2060-\\u2069\\ufeff";

/// Characters that change how text around them is shown without being
/// seen: bidirectional overrides and isolates (which make a name read
/// differently from what it is), zero-width characters and the BOM.
pub fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The class the API document states is exactly what the code refuses.
    #[test]
    fn the_not_shown_class_matches_the_predicates() {
        let mut ranges = Vec::new();
        let mut rest = NOT_SHOWN_CLASS;
        let one = |r: &str| -> (u32, usize) {
            let (digits, len) = match &r[..2] {
                "\\x" => (&r[2..4], 4),
                "\\u" => (&r[2..6], 6),
                other => panic!("unexpected {other}"),
            };
            (u32::from_str_radix(digits, 16).unwrap(), len)
        };
        while !rest.is_empty() {
            let (a, n) = one(rest);
            rest = &rest[n..];
            let b = match rest.strip_prefix('-') {
                Some(r) => {
                    let (b, n) = one(r);
                    rest = &r[n..];
                    b
                }
                None => a,
            };
            ranges.push(a..=b);
        }
        for c in (0..0x10000u32).filter_map(char::from_u32) {
            let in_class = ranges.iter().any(|r| r.contains(&(c as u32)));
            assert_eq!(in_class, c.is_control() || is_invisible_format(c), "{c:?}");
        }
    }

    #[test]
    fn parse_round_trip_and_rejects() {
        let f = FirmId::generate().unwrap();
        assert_eq!(FirmId::parse(f.as_str()), Some(f.clone()));
        assert_eq!(FirmId::from_hex(f.hex()), Some(f.clone()));
        assert!(FirmId::parse("frm_ABC").is_none());
        assert!(FirmId::parse(&f.as_str().to_uppercase()).is_none());
        assert!(FirmId::parse(&f.as_str().replace("frm_", "key_")).is_none());
        assert!(FirmId::parse("../../etc/passwd").is_none());
        assert_ne!(FirmId::generate().unwrap(), f);
    }

    #[test]
    fn ordered_record_ids_sort_by_time() {
        let a = RecordId::generate_ordered(1_790_000_000_000).unwrap();
        let b = RecordId::generate_ordered(1_790_000_000_001).unwrap();
        assert!(a < b, "{a} < {b}");
        assert_eq!(RecordId::parse(b.as_str()), Some(b.clone()));
        assert_ne!(a.hex()[12..], b.hex()[12..]);
    }
}

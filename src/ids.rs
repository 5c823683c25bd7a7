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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! Identifiers that devices put on the wire. They also appear in MQTT topics and URLs, so they are
//! restricted to a conservative alphabet: ASCII letters, digits, `-`, `_` and `.`, 1 to 64 characters.

use std::fmt;

/// The longest identifier accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("identifier is empty")]
    Empty,
    #[error("identifier is {len} bytes long; at most {MAX_ID_LEN} are allowed")]
    TooLong { len: usize },
    #[error(
        "identifier contains {found:?}; only ASCII letters, digits, '-', '_' and '.' are allowed"
    )]
    BadCharacter { found: char },
}

fn check(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty);
    }
    if raw.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { len: raw.len() });
    }
    if let Some(found) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(IdError::BadCharacter { found });
    }
    Ok(())
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, IdError> {
                check(raw)?;
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(raw: &str) -> Result<Self, IdError> {
                Self::parse(raw)
            }
        }
    };
}

identifier!(
    /// A device: one MQTT client that publishes for one or more sensors.
    DeviceId
);
identifier!(
    /// A sensor's public key, as devices name it on the wire (`"flensburg.sea-level"`).
    SensorKey
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let cases: &[(&str, Result<(), IdError>)] = &[
            ("flensburg.sea-level", Ok(())),
            ("A_1", Ok(())),
            ("", Err(IdError::Empty)),
            ("a/b", Err(IdError::BadCharacter { found: '/' })),
            ("+", Err(IdError::BadCharacter { found: '+' })),
            ("ø", Err(IdError::BadCharacter { found: 'ø' })),
        ];
        for (raw, expected) in cases {
            assert_eq!(SensorKey::parse(raw).map(|_| ()), *expected, "{raw:?}");
        }
        let long = "x".repeat(65);
        assert_eq!(DeviceId::parse(&long), Err(IdError::TooLong { len: 65 }));
    }
}

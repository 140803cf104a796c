//! The container id as the engine sends it: exactly 64 lowercase hex digits. Store paths are
//! built only from this validated form, so no request can name a path outside the state dir.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("container id {shown:?} is not 64 lowercase hex digits")]
pub struct InvalidContainerId {
    shown: String,
}

impl ContainerId {
    pub fn parse(text: &str) -> Result<Self, InvalidContainerId> {
        let valid = text.len() == 64
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            // Show a bounded prefix: the text comes from outside and may be huge.
            Err(InvalidContainerId {
                shown: text.chars().take(80).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 12-digit form `docker ps` shows, for log lines.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_engine_ids_only() {
        let id = "a".repeat(64);
        assert_eq!(ContainerId::parse(&id).unwrap().as_str(), id);
        for bad in [
            "../../etc",
            "",
            &"A".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
        ] {
            assert!(ContainerId::parse(bad).is_err(), "{bad}");
        }
    }
}

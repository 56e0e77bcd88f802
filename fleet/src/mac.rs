//! Ethernet MAC addresses, the key of every host record.
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address (six bytes), shown as `52:54:00:12:34:56`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Mac {
    /// `aa-bb-cc-dd-ee-ff`, the form grub and PXELINUX use in per-host file names.
    pub fn dashed(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

impl FromStr for Mac {
    type Err = String;
    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` and `aabbccddeeff`, any case.
    fn from_str(s: &str) -> Result<Self, String> {
        let hexdigits: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
        let seps = s.len() - hexdigits.len();
        // ASCII hex only: slicing below must stay on character boundaries (a multi-byte
        // character here made a hostile URL panic the handler; found by schemathesis).
        if hexdigits.len() != 12
            || !(seps == 0 || seps == 5)
            || !hexdigits.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(format!(
                "{s:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)"
            ));
        }
        let mut out = [0u8; 6];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&hexdigits[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("{s:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)"))?;
        }
        Ok(Self(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parse_forms() {
        let m: Mac = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:01");
        assert_eq!("52-54-00-ab-cd-01".parse::<Mac>().unwrap(), m);
        assert_eq!("525400abcd01".parse::<Mac>().unwrap(), m);
        assert_eq!(m.dashed(), "52-54-00-ab-cd-01");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "5:254:00:ab:cd:01:",
            "52:54:00-abcd01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text, including multi-byte characters, is an error or a MAC: never a panic.
        #[test]
        fn parse_never_panics(s in "\\PC{0,20}") {
            let _ = s.parse::<Mac>();
        }

        #[test]
        fn display_round_trips(b in any::<[u8; 6]>()) {
            prop_assert_eq!(Mac(b).to_string().parse::<Mac>().unwrap(), Mac(b));
        }
    }

    #[test]
    fn multibyte_characters_are_refused() {
        assert!("0\u{80}\u{80}\u{800}\u{10000}".parse::<Mac>().is_err());
        assert!("52:54:00:aa:bb:cé".parse::<Mac>().is_err());
    }
}

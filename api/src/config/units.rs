//! Human-friendly value types of the configuration: sizes (`512MiB`), durations (`30s`) and
//! listen addresses. Each parses from a string and names the offending value when it cannot.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte count written as `512MiB`, `2GiB`, `100GB`, `4096` (bytes) ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

const SIZE_UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("kB", 1_000),
    ("B", 1),
];

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expected = || format!("expected a size such as 512MiB or 2GiB, got {text:?}");
        let trimmed = text.trim();
        let (number, multiplier) = SIZE_UNITS
            .iter()
            .find_map(|(unit, mult)| trimmed.strip_suffix(unit).map(|n| (n.trim(), *mult)))
            .unwrap_or((trimmed, 1));
        if number.is_empty() {
            return Err(expected());
        }
        let bytes = if let Ok(whole) = number.parse::<u64>() {
            whole.checked_mul(multiplier).ok_or_else(expected)?
        } else {
            let fractional: f64 = number.parse().map_err(|_| expected())?;
            let bytes = fractional * multiplier as f64;
            if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
                return Err(expected());
            }
            bytes.round() as u64
        };
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, mult) in SIZE_UNITS.iter().take(4) {
            if self.0 >= *mult && self.0.is_multiple_of(*mult) {
                return write!(f, "{}{unit}", self.0 / mult);
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// A duration written as `30s`, `5m`, `2h`, `1d`, `250ms`; `off` where a setting allows it is
/// handled by [`Interval`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationSetting(pub Duration);

fn parse_duration(text: &str) -> Option<Duration> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = trimmed.split_at(split);
    let amount: u64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => return Some(Duration::from_millis(amount)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    amount.checked_mul(seconds).map(Duration::from_secs)
}

fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if duration.subsec_millis() != 0 || secs == 0 {
        return format!("{}ms", duration.as_millis());
    }
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

impl FromStr for DurationSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_duration(text)
            .map(DurationSetting)
            .ok_or_else(|| format!("expected a duration such as 30s, 5m or 2h, got {text:?}"))
    }
}

impl fmt::Display for DurationSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

/// A period that may be switched off: `5m`, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval(pub Option<Duration>);

impl FromStr for Interval {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(Interval(None));
        }
        match parse_duration(text) {
            Some(d) if !d.is_zero() => Ok(Interval(Some(d))),
            _ => Err(format!(
                "expected a duration such as 5m, or \"off\", got {text:?}"
            )),
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => f.write_str(&format_duration(d)),
            None => f.write_str("off"),
        }
    }
}

/// A TCP listen address such as `127.0.0.1:8080` (port 0 picks a free port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.trim()
            .parse()
            .map(ListenAddr)
            .map_err(|_| format!("expected an address such as 127.0.0.1:8080, got {text:?}"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Implements serde for the string-shaped settings above through `FromStr` / `Display`.
macro_rules! string_setting {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = StringOrNumber::deserialize(deserializer)?;
                raw.0.parse().map_err(serde::de::Error::custom)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    )*};
}
string_setting!(ByteSize, DurationSetting, Interval, ListenAddr);

/// Accepts `4096` as well as `"4KiB"` so that a bare byte count needs no quotes.
struct StringOrNumber(String);

impl<'de> Deserialize<'de> for StringOrNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = StringOrNumber;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(StringOrNumber(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!("512MiB".parse::<ByteSize>(), Ok(ByteSize(512 << 20)));
        assert_eq!("2GiB".parse::<ByteSize>(), Ok(ByteSize(2 << 30)));
        assert_eq!("1.5KiB".parse::<ByteSize>(), Ok(ByteSize(1536)));
        assert_eq!("100GB".parse::<ByteSize>(), Ok(ByteSize(100_000_000_000)));
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert_eq!(ByteSize(8 << 20).to_string(), "8MiB");
    }

    #[test]
    fn bad_sizes_name_the_value() {
        let err = "lots".parse::<ByteSize>().expect_err("not a size");
        assert!(err.contains("\"lots\""), "{err}");
        assert!("-1GiB".parse::<ByteSize>().is_err());
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!("99999999999TiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn durations_and_intervals() {
        assert_eq!(
            "30s".parse::<DurationSetting>(),
            Ok(DurationSetting(Duration::from_secs(30)))
        );
        assert_eq!(
            "5m".parse::<Interval>(),
            Ok(Interval(Some(Duration::from_secs(300))))
        );
        assert_eq!("off".parse::<Interval>(), Ok(Interval(None)));
        assert!("0s".parse::<Interval>().is_err());
        assert!("5 fortnights".parse::<DurationSetting>().is_err());
        assert_eq!(DurationSetting(Duration::from_secs(7200)).to_string(), "2h");
    }

    #[test]
    fn listen_addresses() {
        assert!("127.0.0.1:0".parse::<ListenAddr>().is_ok());
        let err = "localhost".parse::<ListenAddr>().expect_err("no port");
        assert!(err.contains("localhost"));
    }
}

//! `ReadableDuration` and `ReadableSize`: config values with TiKV's string
//! forms ("5s", "100ms", "1m30s", "10MiB", "512KB").

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::ser::{Serialize, Serializer};

/// Error for a config value that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid config value {value:?}: {reason}")]
pub struct ParseError {
    /// The text that was rejected.
    pub value: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

fn parse_err(value: &str, reason: &'static str) -> ParseError {
    ParseError {
        value: value.to_owned(),
        reason,
    }
}

const KIB: u64 = 1024;
const MIB: u64 = KIB * 1024;
const GIB: u64 = MIB * 1024;
const TIB: u64 = GIB * 1024;

/// A byte size written as "1MiB", "512KB", "8GiB" or a plain number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ReadableSize(pub u64);

impl ReadableSize {
    /// `n` kibibytes.
    pub const fn kb(n: u64) -> ReadableSize {
        ReadableSize(n * KIB)
    }
    /// `n` mebibytes.
    pub const fn mb(n: u64) -> ReadableSize {
        ReadableSize(n * MIB)
    }
    /// `n` gibibytes.
    pub const fn gb(n: u64) -> ReadableSize {
        ReadableSize(n * GIB)
    }
    /// The size in bytes.
    pub fn as_bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ReadableSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b == 0 {
            write!(f, "0KiB")
        } else if b.is_multiple_of(TIB) {
            write!(f, "{}TiB", b / TIB)
        } else if b.is_multiple_of(GIB) {
            write!(f, "{}GiB", b / GIB)
        } else if b.is_multiple_of(MIB) {
            write!(f, "{}MiB", b / MIB)
        } else if b.is_multiple_of(KIB) {
            write!(f, "{}KiB", b / KIB)
        } else {
            write!(f, "{}B", b)
        }
    }
}

impl FromStr for ReadableSize {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<ReadableSize, ParseError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(parse_err(s, "empty size"));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit_bytes = match unit.trim() {
            "" | "B" => 1,
            "K" | "KB" | "KiB" => KIB,
            "M" | "MB" | "MiB" => MIB,
            "G" | "GB" | "GiB" => GIB,
            "T" | "TB" | "TiB" => TIB,
            _ => {
                return Err(parse_err(
                    s,
                    "unknown size unit (use B, KiB, MiB, GiB, TiB)",
                ))
            }
        };
        let n: f64 = num
            .parse()
            .map_err(|_| parse_err(s, "size must start with a number"))?;
        if !n.is_finite() || n < 0.0 {
            return Err(parse_err(s, "size must be a non-negative number"));
        }
        Ok(ReadableSize((n * unit_bytes as f64) as u64))
    }
}

impl Serialize for ReadableSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ReadableSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ReadableSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"10MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ReadableSize, E> {
                Ok(ReadableSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ReadableSize, E> {
                u64::try_from(v)
                    .map(ReadableSize)
                    .map_err(|_| E::custom("size must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ReadableSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written as "5s", "100ms", "1m30s", "2h" or "0s".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ReadableDuration(pub Duration);

impl ReadableDuration {
    /// `n` seconds.
    pub const fn secs(n: u64) -> ReadableDuration {
        ReadableDuration(Duration::from_secs(n))
    }
    /// `n` milliseconds.
    pub const fn millis(n: u64) -> ReadableDuration {
        ReadableDuration(Duration::from_millis(n))
    }
    /// `n` minutes.
    pub const fn minutes(n: u64) -> ReadableDuration {
        ReadableDuration(Duration::from_secs(n * 60))
    }
    /// The inner `Duration`.
    pub fn as_duration(self) -> Duration {
        self.0
    }
    /// True for a zero duration.
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<Duration> for ReadableDuration {
    fn from(d: Duration) -> ReadableDuration {
        ReadableDuration(d)
    }
}

impl fmt::Display for ReadableDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        for (unit, len) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1000), ("ms", 1)] {
            if ms >= len {
                write!(f, "{}{}", ms / len, unit)?;
                ms %= len;
            }
        }
        Ok(())
    }
}

impl FromStr for ReadableDuration {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<ReadableDuration, ParseError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(parse_err(s, "empty duration"));
        }
        let mut rest = t;
        let mut total_ms: f64 = 0.0;
        while !rest.is_empty() {
            let num_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| parse_err(s, "duration needs a unit (ms, s, m, h, d)"))?;
            if num_end == 0 {
                return Err(parse_err(s, "expected a number"));
            }
            let n: f64 = rest[..num_end]
                .parse()
                .map_err(|_| parse_err(s, "expected a number"))?;
            rest = &rest[num_end..];
            let unit_end = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let factor = match &rest[..unit_end] {
                "ms" => 1.0,
                "s" => 1000.0,
                "m" => 60_000.0,
                "h" => 3_600_000.0,
                "d" => 86_400_000.0,
                _ => return Err(parse_err(s, "unknown duration unit (use ms, s, m, h, d)")),
            };
            total_ms += n * factor;
            rest = &rest[unit_end..];
        }
        Ok(ReadableDuration(Duration::from_micros(
            (total_ms * 1000.0) as u64,
        )))
    }
}

impl Serialize for ReadableDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ReadableDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ReadableDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"5s\" or \"100ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ReadableDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        let cases = [
            ("5s", 5_000),
            ("100ms", 100),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            ("0s", 0),
            ("1.5s", 1_500),
        ];
        for (s, ms) in cases {
            let d: ReadableDuration = s.parse().unwrap();
            assert_eq!(d.0, Duration::from_millis(ms), "{}", s);
        }
        assert_eq!(ReadableDuration::millis(90_500).to_string(), "1m30s500ms");
        assert_eq!(ReadableDuration::secs(0).to_string(), "0s");
        for bad in ["", "5", "s", "5x", "-1s", "1s5"] {
            assert!(bad.parse::<ReadableDuration>().is_err(), "{:?}", bad);
        }
    }

    #[test]
    fn sizes_parse_and_print() {
        let cases = [
            ("1MiB", MIB),
            ("10MiB", 10 * MIB),
            ("512KB", 512 * KIB),
            ("1GiB", GIB),
            ("123", 123),
            ("0.5MiB", MIB / 2),
        ];
        for (s, b) in cases {
            assert_eq!(s.parse::<ReadableSize>().unwrap().0, b, "{}", s);
        }
        assert_eq!(ReadableSize::mb(10).to_string(), "10MiB");
        assert_eq!(ReadableSize(1000).to_string(), "1000B");
        for bad in ["", "MiB", "10XB", "-1MiB"] {
            assert!(bad.parse::<ReadableSize>().is_err(), "{:?}", bad);
        }
    }
}

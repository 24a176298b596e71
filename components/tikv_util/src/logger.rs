//! slog setup with TiKV's log line format, and a capturing drain for tests.
//!
//! A line looks like
//! `[2024/11/19 10:13:27.754 +00:00] [ERROR] [raft_client.rs:460] ["request failed"] [store_id=6365]`.
//! Times are printed in UTC.

use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use slog::{Drain, Key, Level, Logger, OwnedKVList, Record, KV};

/// A drain writing TiKV-formatted lines to `W`.
pub struct TikvFormat<W: Write + Send> {
    out: Mutex<W>,
    level: Level,
}

impl<W: Write + Send> TikvFormat<W> {
    /// Writes records at `level` or more severe to `out`.
    pub fn new(out: W, level: Level) -> TikvFormat<W> {
        TikvFormat {
            out: Mutex::new(out),
            level,
        }
    }
}

/// A logger writing TiKV-formatted lines to stderr at `level` and above.
pub fn stderr_logger(level: Level) -> Logger {
    Logger::root(TikvFormat::new(io::stderr(), level).fuse(), slog::o!())
}

/// A logger that drops everything.
pub fn discard() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Critical => "FATAL",
        Level::Error => "ERROR",
        Level::Warning => "WARN",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
        Level::Trace => "TRACE",
    }
}

/// Formats a unix time in milliseconds as `2024/11/19 10:13:27.754 +00:00`.
pub fn format_utc_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02}.{:03} +00:00",
        y,
        m,
        d,
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms % 1000
    )
}

fn needs_quote(s: &str) -> bool {
    s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '=' | '[' | ']') || c.is_control())
}

fn push_field(buf: &mut String, s: &str) {
    if needs_quote(s) {
        buf.push('"');
        for c in s.chars() {
            match c {
                '"' => buf.push_str("\\\""),
                '\\' => buf.push_str("\\\\"),
                '\n' => buf.push_str("\\n"),
                c => buf.push(c),
            }
        }
        buf.push('"');
    } else {
        buf.push_str(s);
    }
}

/// Collects key-value pairs as strings, in the order slog yields them.
#[derive(Default)]
struct KvCollector(Vec<(String, String)>);

impl slog::Serializer for KvCollector {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments<'_>) -> slog::Result {
        self.0.push((key.to_string(), val.to_string()));
        Ok(())
    }
}

/// Record pairs then logger pairs, each in the order they were written
/// (slog yields them last-first).
fn collect_kvs(record: &Record<'_>, values: &OwnedKVList) -> Vec<(String, String)> {
    let mut own = KvCollector::default();
    let _ = record.kv().serialize(record, &mut own);
    let mut ctx = KvCollector::default();
    let _ = values.serialize(record, &mut ctx);
    own.0.reverse();
    ctx.0.reverse();
    own.0.extend(ctx.0);
    own.0
}

/// Formats one record as a TiKV log line (without the trailing newline).
pub fn format_record(record: &Record<'_>, values: &OwnedKVList) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let file = record.file().rsplit('/').next().unwrap_or("");
    let mut buf = String::with_capacity(128);
    let _ = write!(
        buf,
        "[{}] [{}] [{}:{}] [",
        format_utc_millis(now),
        level_name(record.level()),
        file,
        record.line()
    );
    // The message is always quoted, as TiKV does.
    let msg = record.msg().to_string();
    buf.push('"');
    buf.push_str(&msg.replace('"', "\\\""));
    buf.push_str("\"]");
    for (k, v) in collect_kvs(record, values) {
        buf.push_str(" [");
        buf.push_str(&k);
        buf.push('=');
        push_field(&mut buf, &v);
        buf.push(']');
    }
    buf
}

impl<W: Write + Send> Drain for TikvFormat<W> {
    type Ok = ();
    type Err = io::Error;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> io::Result<()> {
        if !record.level().is_at_least(self.level) {
            return Ok(());
        }
        let line = format_record(record, values);
        let mut out = self.out.lock().unwrap();
        writeln!(out, "{}", line)
    }
}

/// One record seen by a [`LogCapture`].
#[derive(Clone, Debug)]
pub struct CapturedRecord {
    /// Severity.
    pub level: Level,
    /// The message, unformatted.
    pub msg: String,
    /// Key-value pairs, record first then logger context.
    pub kvs: Vec<(String, String)>,
}

impl CapturedRecord {
    /// The value of key `k`, if present.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.kvs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

/// A drain that keeps every record in memory, so tests can count log lines
/// by level, message and store id. Clone it to keep a handle after building
/// the logger with [`LogCapture::logger`].
#[derive(Clone, Default)]
pub struct LogCapture {
    records: Arc<Mutex<Vec<CapturedRecord>>>,
}

impl LogCapture {
    /// An empty capture.
    pub fn new() -> LogCapture {
        LogCapture::default()
    }

    /// A logger that records into this capture.
    pub fn logger(&self) -> Logger {
        Logger::root(self.clone().fuse(), slog::o!())
    }

    /// A snapshot of all records so far.
    pub fn records(&self) -> Vec<CapturedRecord> {
        self.records.lock().unwrap().clone()
    }

    /// How many records have `level` and a message containing `msg`, and, when
    /// `store_id` is given, a `store_id` key with that value.
    pub fn count(&self, level: Level, msg: &str, store_id: Option<u64>) -> usize {
        let want = store_id.map(|s| s.to_string());
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.level == level && r.msg.contains(msg))
            .filter(|r| match &want {
                Some(w) => r.get("store_id") == Some(w.as_str()),
                None => true,
            })
            .count()
    }
}

impl Drain for LogCapture {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let r = CapturedRecord {
            level: record.level(),
            msg: record.msg().to_string(),
            kvs: collect_kvs(record, values),
        };
        self.records.lock().unwrap().push(r);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc_millis(0), "1970/01/01 00:00:00.000 +00:00");
        // 2024-11-19 10:13:27.754 UTC
        assert_eq!(
            format_utc_millis(1_732_011_207_754),
            "2024/11/19 10:13:27.754 +00:00"
        );
        // Leap day.
        assert_eq!(
            format_utc_millis(951_782_400_000),
            "2000/02/29 00:00:00.000 +00:00"
        );
    }

    #[test]
    fn tikv_line_shape() {
        let buf = Buf::default();
        let log = Logger::root(
            TikvFormat::new(buf.clone(), Level::Info).fuse(),
            slog::o!("component" => "raft"),
        );
        slog::error!(log, "request failed"; "store_id" => 6365, "err" => "invalid store ID 6365, not found");
        slog::debug!(log, "hidden");
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{}", text);
        let l = lines[0];
        assert!(l.starts_with('['), "{}", l);
        assert!(l.contains("] [ERROR] [logger.rs:"), "{}", l);
        assert!(
            l.ends_with(
                "[\"request failed\"] [store_id=6365] [err=\"invalid store ID 6365, not found\"] [component=raft]"
            ),
            "{}",
            l
        );
    }

    #[test]
    fn capture_counts_by_level_message_and_store() {
        let cap = LogCapture::new();
        let log = cap.logger();
        slog::warn!(log, "store not found"; "store_id" => 7u64);
        slog::warn!(log, "store not found"; "store_id" => 8u64);
        slog::error!(log, "store not found"; "store_id" => 7u64);
        assert_eq!(cap.count(Level::Warning, "not found", None), 2);
        assert_eq!(cap.count(Level::Warning, "not found", Some(7)), 1);
        assert_eq!(cap.count(Level::Error, "not found", Some(8)), 0);
    }
}

//! `--log-format json`: one JSON object a line, in the shape of tracing-subscriber's flattened JSON
//! format (`timestamp`, `level`, the event's fields in order with `message` first, `target`).
//!
//! Written by hand rather than using that format: it writes through serde_json into a `fmt::Write`
//! adapter that checks every small write as UTF-8 again, and at one line per new Pod that cost
//! ~3 µs of the server's ~39 µs of CPU a request (docs/performance.md). Here each piece goes to
//! the line's buffer as it is, strings escaped in runs. The output is tested against that format's
//! for the same events.

use std::fmt::{self, Write};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The event format of `--log-format json`.
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        // Records from the `log` crate (rustls, kube's dependencies) carry their own level and target.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        write!(
            w,
            "{{\"timestamp\":\"{}\",\"level\":\"{}\"",
            humantime::format_rfc3339_micros(SystemTime::now()),
            meta.level()
        )?;
        let mut fields = Fields { w: &mut w, result: Ok(()) };
        event.record(&mut fields);
        fields.result?;
        w.write_str(",\"target\":")?;
        string(&mut w, meta.target())?;
        w.write_str("}\n")
    }
}

struct Fields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// `,"name":` then the value as `value` writes it (the `log.*` fields of a `log` record
    /// included, as in that format).
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = self.w.write_char(',').and_then(|()| string(self.w, field.name())).and_then(|()| {
            self.w.write_char(':')?;
            value(self.w)
        });
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| string(w, value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    // 128-bit integers are strings (the default, through `record_debug`), as in that format.
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinities: serde_json writes them as null.
        self.entry(field, |w| if value.is_finite() { write!(w, "{value:?}") } else { w.write_str("null") });
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

/// `s` as a JSON string.
fn string(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    w.write_char('"')?;
    Escaped(w).write_str(s)?;
    w.write_char('"')
}

/// Writes what it is given as the inside of a JSON string: runs of plain characters at once,
/// `"`, `\` and control characters escaped as serde_json escapes them.
struct Escaped<'a, 'w>(&'a mut Writer<'w>);

impl Write for Escaped<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            // Every byte matched above is ASCII, so `i` is a character boundary.
            self.0.write_str(&s[plain..i])?;
            match escape {
                "" => write!(self.0, "\\u{b:04x}")?,
                e => self.0.write_str(e)?,
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    #[allow(dead_code)] // read through Debug only
    struct Thing {
        name: &'static str,
        n: u8,
    }

    /// Every kind of field, with characters JSON must escape.
    fn events() {
        let tricky = "quote \" backslash \\ newline \n tab \t bell \u{7} escape \u{1b}[31m nul \0 del \u{7f} é ✓ 🦀";
        tracing::info!(
            uid = "0c9a",
            namespace = "team-a",
            decision = "injected",
            dry_run = false,
            elapsed_us = 287u64,
            "admission"
        );
        tracing::warn!(target: "nixuv::admission", denial = tricky, n = -3i64, big = u128::MAX, small = i128::MIN, "denied {}", 7);
        tracing::error!(ratio = 0.25, nan = f64::NAN, inf = f64::INFINITY, whole = 3.0, thing = ?Thing { name: "a\"b", n: 1 }, "{tricky}");
        tracing::info!(shown = %tricky);
        tracing::debug!(error = &std::io::Error::other("disk \"full\"") as &dyn std::error::Error, "failed");
        // A record of the `log` crate (rustls and kube's dependencies log through it): its own
        // level and target.
        let emit = |args: std::fmt::Arguments<'_>| {
            let record = log::Record::builder()
                .args(args)
                .level(log::Level::Warn)
                .target("rustls::conn")
                .module_path_static(Some("rustls::conn"))
                .file_static(Some("src/conn.rs"))
                .line(Some(7))
                .build();
            tracing_log::format_trace(&record).unwrap();
        };
        emit(format_args!("from the log crate: {tricky}"));
    }

    fn capture(ours: bool) -> String {
        let lines = Lines::default();
        let out = lines.clone();
        let builder = tracing_subscriber::fmt().with_writer(move || out.clone()).with_max_level(tracing::Level::DEBUG);
        if ours {
            tracing::subscriber::with_default(builder.event_format(JsonLines).finish(), events);
        } else {
            tracing::subscriber::with_default(
                builder.json().flatten_event(true).with_current_span(false).finish(),
                events,
            );
        }
        let bytes = lines.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// Each line as its keys in order (duplicates kept) and values.
    fn entries(line: &str) -> Vec<(String, serde_json::Value)> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<(String, serde_json::Value)>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = m.next_entry()? {
                    out.push(e);
                }
                Ok(out)
            }
        }
        serde::Deserializer::deserialize_map(&mut serde_json::Deserializer::from_str(line), V).unwrap()
    }

    #[test]
    fn lines_are_the_json_format_of_tracing_subscriber() {
        let (ours, theirs) = (capture(true), capture(false));
        let (ours, theirs): (Vec<&str>, Vec<&str>) = (ours.lines().collect(), theirs.lines().collect());
        assert_eq!(ours.len(), 6);
        assert!(
            ours[5].contains(r#""level":"WARN""#) && ours[5].ends_with(r#""target":"rustls::conn"}"#),
            "{}",
            ours[5]
        );
        assert_eq!(ours.len(), theirs.len());
        for (o, t) in ours.iter().zip(&theirs) {
            let (mut o, mut t) = (entries(o), entries(t));
            assert_eq!(o[0].0, "timestamp");
            let stamp = o[0].1.as_str().unwrap();
            assert!(humantime::parse_rfc3339(stamp).is_ok() && stamp.len() == 27, "{stamp}");
            o.remove(0);
            t.remove(0);
            assert_eq!(o, t);
        }
        // The escapes themselves (not only what they decode to) are serde_json's.
        let strip = |s: &str| s.split_once(",\"level\"").unwrap().1.to_string();
        assert_eq!(
            ours.iter().map(|l| strip(l)).collect::<Vec<_>>(),
            theirs.iter().map(|l| strip(l)).collect::<Vec<_>>()
        );
    }
}

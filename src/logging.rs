//! Logging, in one place: the subscriber [`init_logging`] installs, nixuv's JSON line format
//! ([`json_format`]) and the writer that sends lines to stderr in bursts ([`burst`]).

pub mod burst;
pub mod json_format;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr. `serve` logs one line per injection, so there a dedicated thread writes them
/// in bursts (`burst`: one `write` per burst, not per line; lines are never dropped, a
/// full buffer makes the request thread wait). The guard flushes at exit.
pub fn init_logging(format: LogFormat, buffered: bool) -> Option<burst::Flusher> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIXUV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A thread that cannot be started leaves the plain writer (a write a line): still every line.
    let (writer, guard) = match buffered.then(|| burst::spawn("nixuv-log", std::io::stderr())) {
        Some(Ok((w, guard))) => (BoxMakeWriter::new(w), Some(guard)),
        _ => (BoxMakeWriter::new(std::io::stderr), None),
    };
    // Colour only on a terminal, and never with NO_COLOR set: `kubectl logs` and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.event_format(json_format::JsonLines).init(),
        LogFormat::Text => builder.with_target(false).init(),
    }
    guard
}

//! Running nix-portable and uv: always an argument vector (never a shell), the process's own
//! environment passed through (so `UV_*` and `NP_*` reach the tools unchanged) plus the variables
//! the store layout fixes, the tool's stderr streamed to the log line by line and its tail kept
//! for error messages.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{tool}: cannot run {program:?}: {source} (set {var} to its path)")]
    Spawn {
        tool: &'static str,
        program: String,
        var: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool}: {message}")]
    Failed { tool: &'static str, message: String, code: Option<i32> },
}

/// A tool to run: its name for logs and errors, and the environment variable that locates it.
pub struct Tool {
    pub name: &'static str,
    pub var: &'static str,
    pub program: OsString,
}

impl Tool {
    pub fn from_env(name: &'static str, var: &'static str, default: &str) -> Self {
        Tool { name, var, program: std::env::var_os(var).filter(|v| !v.is_empty()).unwrap_or_else(|| default.into()) }
    }

    /// Runs the tool; returns its stdout. Fails with the last lines of its stderr.
    pub fn run(
        &self,
        args: &[OsString],
        env: &[(&str, OsString)],
        remove_env: &[&str],
        cwd: Option<&Path>,
    ) -> Result<String, ToolError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for k in remove_env {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let start = Instant::now();
        tracing::debug!(tool = self.name, args = ?args, "running");
        let mut child = cmd.spawn().map_err(|source| ToolError::Spawn {
            tool: self.name,
            program: self.program.to_string_lossy().into_owned(),
            var: self.var,
            source,
        })?;
        let stderr = child.stderr.take().expect("piped");
        let name = self.name;
        let tail = std::thread::spawn(move || {
            let mut tail = VecDeque::with_capacity(40);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let line = line.trim_end().to_string();
                if line.is_empty() {
                    continue;
                }
                tracing::info!(tool = name, "{line}");
                if tail.len() == 40 {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            tail
        });
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            use std::io::Read;
            let _ = out.read_to_string(&mut stdout);
        }
        let status = child.wait().map_err(|source| ToolError::Spawn {
            tool: self.name,
            program: self.program.to_string_lossy().into_owned(),
            var: self.var,
            source,
        })?;
        let tail: Vec<String> = tail.join().unwrap_or_default().into();
        tracing::debug!(tool = self.name, status = ?status.code(), elapsed_ms = start.elapsed().as_millis() as u64, "finished");
        if status.success() {
            return Ok(stdout);
        }
        // The tool's own error: from its first line that says "error" (uv and nix explain on the
        // lines after it), else the tail; at most 12 lines.
        let from = tail.iter().position(|l| l.to_lowercase().contains("error")).unwrap_or(0);
        let message = tail[from..].iter().take(12).map(String::as_str).collect::<Vec<_>>().join(" | ");
        Err(ToolError::Failed {
            tool: self.name,
            message: if message.is_empty() { format!("exited with {status}") } else { message },
            code: status.code(),
        })
    }
}

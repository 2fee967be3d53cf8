//! The `command` backend: a helper prints the token, in the spirit of git credential helpers.
//!
//! `command = ["gh", "auth", "token"]` runs `gh auth token` (no shell) on every fetch, with
//! `{user}` and `{provider}` replaced in each argument. Stdin is empty; stdout, trimmed, is the
//! token and must be one non-empty line. A non-zero exit, too much output or the timeout is an
//! error; on timeout the helper is killed. Only a short, sanitised start of stderr is kept.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use zeroize::Zeroizing;

use super::{Provider, Secret, TokenFuture, Vault, VaultError, sanitize};

/// The most stdout a helper may print.
const MAX_STDOUT: usize = 64 * 1024;
/// How much of stderr is kept for an error message (before sanitising).
const MAX_STDERR: usize = 4 * 1024;
/// How much of stderr an error message shows.
const STDERR_SHOWN: usize = 200;

/// Tokens printed by a helper program.
#[derive(Debug)]
pub struct CommandVault {
    argv: Vec<String>,
    timeout: Duration,
}

/// What a finished helper left behind.
struct Finished {
    status: ExitStatus,
    stdout: Zeroizing<Vec<u8>>,
    stdout_overflow: bool,
    stderr: Zeroizing<Vec<u8>>,
}

impl CommandVault {
    /// `argv[0]` is the program; `timeout` bounds each run.
    pub fn new(argv: Vec<String>, timeout: Duration) -> Result<CommandVault, VaultError> {
        if argv.first().is_none_or(|p| p.trim().is_empty()) {
            return Err(VaultError::Config(
                "vault.command needs a program, e.g. [\"gh\", \"auth\", \"token\"]".into(),
            ));
        }
        Ok(CommandVault { argv, timeout })
    }

    fn program(&self) -> String {
        self.argv.first().cloned().unwrap_or_default()
    }

    fn error(&self, message: String) -> VaultError {
        VaultError::Command {
            program: self.program(),
            message,
        }
    }

    async fn fetch(&self, user: &str, provider: Provider) -> Result<Secret, VaultError> {
        let args: Vec<String> = self
            .argv
            .iter()
            .skip(1)
            .map(|a| {
                a.replace("{user}", user)
                    .replace("{provider}", provider.name())
            })
            .collect();
        let mut child = Command::new(self.program())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.error(format!("cannot start: {e}")))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let run = async {
            let ((stdout, stdout_overflow), (stderr, _), status) = tokio::join!(
                read_capped(stdout, MAX_STDOUT),
                read_capped(stderr, MAX_STDERR),
                child.wait()
            );
            status.map(|status| Finished {
                status,
                stdout,
                stdout_overflow,
                stderr,
            })
        };
        let outcome = tokio::time::timeout(self.timeout, run).await;
        let finished = match outcome {
            Ok(result) => result.map_err(|e| self.error(format!("cannot wait for it: {e}")))?,
            Err(_) => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
                return Err(VaultError::Timeout {
                    after: self.timeout,
                    what: format!("token command {:?} was killed", self.program()),
                });
            }
        };
        self.token_from(finished)
    }

    fn token_from(&self, done: Finished) -> Result<Secret, VaultError> {
        if !done.status.success() {
            let stderr = String::from_utf8_lossy(&done.stderr);
            let stderr = Zeroizing::new(stderr.into_owned());
            let shown = sanitize(&stderr, &[], STDERR_SHOWN);
            let tail = if shown.is_empty() {
                String::new()
            } else {
                format!(": {shown}")
            };
            return Err(self.error(format!("{}{tail}", done.status)));
        }
        if done.stdout_overflow {
            return Err(self.error(format!("printed more than {MAX_STDOUT} bytes")));
        }
        let text = std::str::from_utf8(&done.stdout)
            .map_err(|_| self.error("printed something that is not UTF-8".into()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(self.error("printed nothing".into()));
        }
        if token.contains(char::is_whitespace) {
            return Err(
                self.error("printed more than one word; it must print only the token".into())
            );
        }
        Ok(Secret::new(token.to_string()))
    }
}

impl Vault for CommandVault {
    fn token<'a>(&'a self, user: &'a str, provider: Provider) -> TokenFuture<'a> {
        Box::pin(self.fetch(user, provider))
    }
}

/// Reads `pipe` to its end, keeping at most `cap` bytes (the rest is drained, so a chatty
/// helper never blocks on a full pipe). Returns the bytes and whether anything was dropped.
async fn read_capped<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    cap: usize,
) -> (Zeroizing<Vec<u8>>, bool) {
    let mut kept = Zeroizing::new(Vec::new());
    let mut overflow = false;
    let Some(mut pipe) = pipe else {
        return (kept, overflow);
    };
    let mut buf = Zeroizing::new([0u8; 4096]);
    loop {
        match pipe.read(&mut buf[..]).await {
            Ok(0) | Err(_) => return (kept, overflow),
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                overflow |= n > room;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: Duration) -> CommandVault {
        CommandVault::new(
            vec![
                "sh".into(),
                "-c".into(),
                script.into(),
                "helper".into(),
                "{user}".into(),
                "{provider}".into(),
            ],
            timeout,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn stdout_trimmed_is_the_token_and_arguments_are_substituted() {
        let v = sh(
            "printf '  tok-%s-%s\\n' \"$1\" \"$2\"",
            Duration::from_secs(5),
        );
        let t = v.token("auth0|7", Provider::Google).await.unwrap();
        assert_eq!(t.expose(), "tok-auth0|7-google");
    }

    #[tokio::test]
    async fn failures_are_errors_without_the_output() {
        let v = sh(
            "echo ghp_abcdefghijklmnopqrstuvwxyz0123456789 >&2; exit 3",
            Duration::from_secs(5),
        );
        let e = v
            .token("u", Provider::Github)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(!e.contains("ghp_"), "{e}");
        let e = sh("true", Duration::from_secs(5))
            .token("u", Provider::Github)
            .await;
        assert!(e.unwrap_err().to_string().contains("printed nothing"));
        let e = sh("echo one; echo two", Duration::from_secs(5))
            .token("u", Provider::Github)
            .await;
        assert!(e.unwrap_err().to_string().contains("more than one word"));
        let missing =
            CommandVault::new(vec!["/nonexistent/helper".into()], Duration::from_secs(5)).unwrap();
        let e = missing.token("u", Provider::Github).await.unwrap_err();
        assert!(e.to_string().contains("cannot start"), "{e}");
    }

    #[tokio::test]
    async fn a_slow_helper_times_out_and_is_killed() {
        let started = std::time::Instant::now();
        let v = sh("sleep 30; echo late", Duration::from_millis(300));
        let e = v.token("u", Provider::Github).await.unwrap_err();
        assert!(e.is_timeout(), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

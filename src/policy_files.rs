//! The policy directory on disk: reading a set (`*.policy` directly under the directory), and
//! hot reload — the directory is polled, and a changed set is loaded in full and swapped in
//! only when it passes every check and test; a bad edit leaves the running set in force.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::ast::Source;
use crate::policy::parser::MAX_FILE_BYTES;
use crate::policy::schema::Schema;
use crate::policy::{self, Active, LoadError, LoadErrors, Program};

/// How often the directory is checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Reads every `*.policy` file directly under `dir` (dot-files skipped), sorted by name.
pub fn read_dir(dir: &Path) -> Result<Vec<Source>, LoadErrors> {
    let whole = |m: String| LoadErrors(vec![LoadError::whole(dir.display().to_string(), m)]);
    let entries = std::fs::read_dir(dir)
        .map_err(|e| whole(format!("cannot read the policy directory: {e}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| whole(format!("cannot read the policy directory: {e}")))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || path.extension().is_none_or(|e| e != "policy") {
            continue;
        }
        if path.is_file() {
            paths.push((name, path));
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(whole(
            "no *.policy files: the gate blocks every request until one loads".into(),
        ));
    }
    let mut sources = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for (name, path) in paths {
        match read_one(&path) {
            Ok(text) => sources.push(Source {
                name: path.display().to_string(),
                text,
            }),
            Err(m) => errors.push(LoadError::whole(path.display().to_string(), m)),
        }
        let _ = name;
    }
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(LoadErrors(errors))
    }
}

/// One file, refused unread past the size limit.
fn read_one(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(format!(
            "the file is over {MAX_FILE_BYTES} bytes; policy files are limited to 1 MiB"
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "the file is not UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Reads and loads the set in `dir` (parse, check, tests).
pub fn load_dir(dir: &Path, schema: &Schema) -> Result<Program, LoadErrors> {
    policy::load(read_dir(dir)?, schema)
}

/// A digest of the directory's policy files (names and contents): a change means reload.
fn fingerprint(dir: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    match read_dir(dir) {
        Ok(sources) => {
            for s in sources {
                s.name.hash(&mut h);
                s.text.hash(&mut h);
            }
        }
        Err(e) => e.to_string().hash(&mut h),
    }
    h.finish()
}

/// Loads `dir` into `active` now: on success the set is swapped in; on failure the previous
/// set stays and the errors are logged and kept in the status.
pub fn reload(dir: &Path, schema: &Schema, active: &Active) -> Result<(), LoadErrors> {
    match load_dir(dir, schema) {
        Ok(program) => {
            tracing::info!(
                "policy: loaded {} rules from {} files",
                program.rules.len(),
                program.sources.len()
            );
            active.install(program);
            Ok(())
        }
        Err(e) => {
            if active.current().is_some() {
                tracing::warn!(
                    "policy: the new set was not loaded; the previous set stays in force:\n{e}"
                );
            } else {
                tracing::error!(
                    "policy: no set loaded; every request is blocked (\"no active policy\"):\n{e}"
                );
            }
            active.failed(&e);
            Err(e)
        }
    }
}

/// Polls `dir` every `interval` and reloads on a change, until the task is dropped.
pub async fn watch(
    dir: std::path::PathBuf,
    schema: Arc<Schema>,
    active: Arc<Active>,
    interval: Duration,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) {
    let mut last = {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || fingerprint(&d))
            .await
            .unwrap_or(0)
    };
    loop {
        tokio::time::sleep(interval).await;
        let d = dir.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&d)).await else {
            continue;
        };
        if now == last {
            continue;
        }
        last = now;
        let (d, s, a) = (dir.clone(), schema.clone(), active.clone());
        let loaded = tokio::task::spawn_blocking(move || reload(&d, &s, &a).is_ok())
            .await
            .unwrap_or(false);
        if let Some(m) = &metrics {
            m.policy_reload(loaded);
        }
    }
}
